//! The notification listener: one connection per store that `LISTEN`s on `dcb_events` (raised by
//! the trigger of migration V4 on every append) and counts what it hears into a watch channel.
//! Followers wait on the channel *or* their poll interval, so a notification lost while the
//! listener reconnects costs at most one poll.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel the trigger of migration V4 notifies.
const CHANNEL: &str = "dcb_events";

/// Wake-ups for the store's followers.
pub(crate) struct Wakeups {
    heard: watch::Sender<u64>,
    listener: JoinHandle<()>,
}

impl Wakeups {
    /// Starts the listener. Must be called inside a tokio runtime.
    pub(crate) fn start(config: tokio_postgres::Config) -> Self {
        let heard = watch::Sender::new(0);
        let listener = tokio::spawn(listen(config, heard.clone()));
        Self { heard, listener }
    }

    /// A receiver that sees every notification heard after it was made (and each reconnection,
    /// after which the listener may have missed some).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.heard.subscribe()
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

async fn listen(config: tokio_postgres::Config, heard: watch::Sender<u64>) {
    let mut failures = 0u32;
    loop {
        match listen_once(&config, &heard).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "notification listener lost its connection");
            }
        }
        // Whatever was appended while nobody listened must be looked for.
        heard.send_modify(|n| *n = n.wrapping_add(1));
        let delay = Duration::from_millis(50u64 << failures.min(5));
        tokio::time::sleep(delay).await;
    }
}

/// Listens until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    heard: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // The connection delivers notifications only to whoever polls it for messages.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = async {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => heard.send_modify(|n| *n = n.wrapping_add(1)),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let subscribe = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Appends made before LISTEN took effect were not heard.
        heard.send_modify(|n| *n = n.wrapping_add(1));
        // Keep the client (and so the connection) alive while the driver runs.
        futures::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    tokio::select! {
        ended = driver => ended,
        failed = subscribe => failed,
    }
}
