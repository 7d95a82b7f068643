//! A connection of its own, outside the pool, for what lives as long as a session: the session
//! advisory locks of a subscription's consumer and of a command actor's turns on keys contended
//! by several processes. Such a lock must not outlive its holder by going back to a pool.

use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{NoTls, Statement};

use crate::error::StoreError;

/// A dedicated connection whose session locks end with it.
pub(crate) struct Session {
    client: tokio_postgres::Client,
    /// Becomes `true` when the connection ends.
    ended: watch::Receiver<bool>,
    driver: JoinHandle<()>,
    /// The statements taking turns and giving them back, prepared on this connection when
    /// first needed.
    take_turns: OnceCell<Statement>,
    give_back: OnceCell<Statement>,
}

impl Session {
    /// These settings (the store's) for a session: keepalives that end it soon after its
    /// process or host is gone.
    pub(crate) fn config(base: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut config = base.clone();
        // A process that dies closes its socket and the server ends the session at once. A host
        // that vanishes closes nothing: the server's own keepalives (set for this session) end
        // it within about idle + count x interval = 8 s, instead of the system's default of
        // two hours and more; and the client's notice a vanished server.
        const SERVER_KEEPALIVES: &str =
            "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3";
        let options = match config.get_options() {
            Some(o) => format!("{o} {SERVER_KEEPALIVES}"),
            None => SERVER_KEEPALIVES.to_owned(),
        };
        config
            .options(options)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        config
    }

    /// Opens a connection with these settings (the store's).
    pub(crate) async fn open(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let config = Self::config(config);
        let (client, connection) = config.connect(NoTls).await?;
        let (ended_tx, ended) = watch::channel(false);
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "session ended");
            }
            let _ = ended_tx.send(true);
        });
        Ok(Self {
            client,
            ended,
            driver,
            take_turns: OnceCell::new(),
            give_back: OnceCell::new(),
        })
    }

    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// `SELECT dcb_take_turns($1)` (V6) on this connection, prepared once instead of at every
    /// turn.
    pub(crate) async fn take_turns_statement(&self) -> Result<&Statement, tokio_postgres::Error> {
        self.take_turns
            .get_or_try_init(|| self.client.prepare("SELECT dcb_take_turns($1)"))
            .await
    }

    /// `SELECT pg_advisory_unlock_all()` on this connection, prepared once.
    pub(crate) async fn give_back_statement(&self) -> Result<&Statement, tokio_postgres::Error> {
        self.give_back
            .get_or_try_init(|| self.client.prepare("SELECT pg_advisory_unlock_all()"))
            .await
    }

    /// Whether the connection is still up (a lock it held is gone otherwise).
    pub(crate) fn is_alive(&self) -> bool {
        !*self.ended.borrow() && !self.client.is_closed()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the client closes the connection; the driver then ends by itself. Abort it
        // anyway so that a half-open socket cannot keep the task around.
        self.driver.abort();
    }
}
