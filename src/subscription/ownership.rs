//! One active consumer per subscription name, across processes: the consumer holds a session
//! advisory lock on a connection of its own. The lock lives exactly as long as that session, so a
//! process that dies (SIGKILL included: the kernel closes its socket) or loses its connection
//! releases it at once, and a standby polling `pg_try_advisory_lock` takes over within one
//! takeover interval.
//!
//! Correctness never rests on the lock: every checkpoint advance is a compare-and-set on the
//! checkpoint row (see `checkpoint.rs`), so a consumer that lost its session without noticing yet
//! cannot apply a batch twice; the lock only keeps the others from doing the work in vain.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::error::StoreError;

/// The advisory-lock key space of subscriptions (the two-int form; `DCBS` in ASCII).
const LOCK_SPACE: i32 = 0x4443_4253;

/// A connection that may hold a subscription's lock.
pub(crate) struct Session {
    client: tokio_postgres::Client,
    /// Becomes `true` when the connection ends.
    ended: watch::Receiver<bool>,
    driver: JoinHandle<()>,
}

impl Session {
    /// Opens a connection of its own (not the pool's: the lock must not outlive its holder by
    /// going back to a pool).
    pub(crate) async fn open(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let mut config = config.clone();
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
        let (client, connection) = config.connect(NoTls).await?;
        let (ended_tx, ended) = watch::channel(false);
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "subscription session ended");
            }
            let _ = ended_tx.send(true);
        });
        Ok(Self {
            client,
            ended,
            driver,
        })
    }

    /// Whether the connection is still up (a lock it held is gone otherwise).
    pub(crate) fn is_alive(&self) -> bool {
        !*self.ended.borrow() && !self.client.is_closed()
    }

    /// Takes the subscription's lock if nobody holds it.
    pub(crate) async fn try_lock(&self, subscription_id: i32) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_SPACE, &subscription_id],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Gives the lock back and closes the session.
    pub(crate) async fn release(self, subscription_id: i32) {
        let _ = self
            .client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LOCK_SPACE, &subscription_id],
            )
            .await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the client closes the connection; the driver then ends by itself. Abort it
        // anyway so that a half-open socket cannot keep the task around.
        self.driver.abort();
    }
}
