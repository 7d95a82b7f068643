//! The two delivery modes: a handler's work and the checkpoint's advance in one transaction
//! (exactly once), or the handler first and the checkpoint after it (at least once).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use futures::FutureExt;

use super::checkpoint;
use crate::error::StoreError;
use crate::event::SequencedEvent;

/// What a handler answers when it cannot handle a batch; the subscription retries it, then stops.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler whose effects live in the store's database: it writes through the transaction it is
/// given, in which the subscription's checkpoint then advances. Each event's effect is applied
/// exactly once, whatever fails when (an error, a panic, a lost connection or a killed process
/// rolls back the handler's writes with the checkpoint).
pub trait TransactionalHandler: Send + 'static {
    /// Applies `events` (in position order, at least one) through `tx`. Must not commit or roll
    /// back `tx` itself.
    fn handle(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        events: &[SequencedEvent],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A handler whose effects live elsewhere (an e-mail, a message queue): the checkpoint advances
/// after it succeeds, so after a failure or a takeover a batch may be handed over again. Each
/// event's id ([`crate::Event::id`]) is the key to deduplicate by.
pub trait Handler: Send + 'static {
    /// Handles `events` (in position order, at least one).
    fn handle(
        &mut self,
        events: &[SequencedEvent],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Why a batch was not delivered.
pub(crate) enum Undelivered {
    /// The handler failed (or panicked); nothing of the batch counts as handled.
    Handler(String),
    /// The database failed (its message); for a transactional handler the batch may or may not
    /// have committed.
    Store(String),
    /// The checkpoint had moved: another consumer is active.
    Overtaken,
}

impl From<StoreError> for Undelivered {
    fn from(e: StoreError) -> Self {
        Self::Store(match &e {
            StoreError::Db(db) => db_message(db),
            other => other.to_string(),
        })
    }
}

impl From<tokio_postgres::Error> for Undelivered {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for Undelivered {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::from(e).into()
    }
}

/// A delivery mode: hands `events` over and moves the checkpoint of `name` from `from` to `to`;
/// answers the database's clock at the move.
pub(crate) trait Delivery: Send + 'static {
    fn deliver(
        &mut self,
        pool: &Pool,
        name: &str,
        events: &[SequencedEvent],
        from: i64,
        to: i64,
    ) -> impl Future<Output = Result<SystemTime, Undelivered>> + Send;
}

/// Runs a handler's future, turning a panic into a handler failure. A transient database error
/// the handler passed on (a lost connection, a deadlock, a serialization failure, a server
/// shutting down) is the database's failure, not the handler's: it is retried without using up
/// the handler's attempts.
async fn guarded<F>(handling: F) -> Result<(), Undelivered>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    match AssertUnwindSafe(handling).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match e.downcast::<tokio_postgres::Error>() {
            Ok(db) => {
                let message = db_message(&db);
                if StoreError::from(*db).is_transient() {
                    Err(Undelivered::Store(message))
                } else {
                    Err(Undelivered::Handler(message))
                }
            }
            Err(e) => Err(Undelivered::Handler(e.to_string())),
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(Undelivered::Handler(format!(
                "the handler panicked: {message}"
            )))
        }
    }
}

/// A database error with the server's message (tokio-postgres' own says only "db error").
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(server) => format!("{e}: {server}"),
        None => e.to_string(),
    }
}

/// [`TransactionalHandler`] delivery.
pub(crate) struct InTransaction<H>(pub(crate) H);

impl<H: TransactionalHandler> Delivery for InTransaction<H> {
    async fn deliver(
        &mut self,
        pool: &Pool,
        name: &str,
        events: &[SequencedEvent],
        from: i64,
        to: i64,
    ) -> Result<SystemTime, Undelivered> {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        if !events.is_empty() {
            let handled = guarded(self.0.handle(&tx, events)).await;
            if let Err(Undelivered::Handler(error)) = &handled
                && tx.client().is_closed()
            {
                return Err(Undelivered::Store(format!(
                    "the connection closed under the handler: {error}"
                )));
            }
            handled?;
        }
        // The row lock this takes also queues a consumer that lost its lock without knowing
        // behind this one; it then finds the checkpoint moved.
        let Some(at) = checkpoint::advance(&*tx, name, from, to).await? else {
            return Err(Undelivered::Overtaken);
        };
        tx.commit().await?;
        Ok(at)
    }
}

/// [`Handler`] delivery.
pub(crate) struct AfterHandling<H>(pub(crate) H);

impl<H: Handler> Delivery for AfterHandling<H> {
    async fn deliver(
        &mut self,
        pool: &Pool,
        name: &str,
        events: &[SequencedEvent],
        from: i64,
        to: i64,
    ) -> Result<SystemTime, Undelivered> {
        if !events.is_empty() {
            guarded(self.0.handle(events)).await?;
        }
        let client = pool.get().await?;
        checkpoint::advance(&**client, name, from, to)
            .await?
            .ok_or(Undelivered::Overtaken)
    }
}
