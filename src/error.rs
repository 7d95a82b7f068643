//! Errors of the store, one enum per outcome family.

use std::sync::Arc;

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::event::Position;
use crate::validate::ValidationError;

/// A read, a migration or a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input was refused before reaching the database.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// PostgreSQL answered with an error or the connection broke.
    #[error("database error")]
    Db(#[source] Arc<tokio_postgres::Error>),
    /// No connection could be had from the pool in time.
    #[error("could not get a database connection")]
    Pool(#[source] Arc<deadpool_postgres::PoolError>),
    /// The connection pool could not be built from the configuration.
    #[error("invalid database configuration")]
    Config(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Applying `migrations/` failed.
    #[error("migration failed")]
    Migration(#[source] Arc<refinery::Error>),
    /// A stored row could not be decoded (someone wrote to the tables by hand).
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    /// The store's background writer has stopped (the runtime is shutting down).
    #[error("the store is closed")]
    Closed,
    /// No database to connect to and none could be started (see [`crate::local`]).
    #[error("no database available: {0}")]
    NoDatabase(String),
}

impl StoreError {
    /// Whether retrying the same operation may succeed: a lost connection, a server shutting
    /// down or restarting, a pool timeout, a cancelled statement or a lock timeout.
    ///
    /// An append that failed this way may or may not have committed; re-sending the same events
    /// is safe because event ids make appends idempotent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => is_transient_db_error(e),
            StoreError::Pool(_) | StoreError::Closed => true,
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether an append that failed with this error may nevertheless have been committed: the
    /// connection broke (or the server went down) after the statement was sent, so its answer,
    /// not necessarily its commit, was lost. `false` when the database certainly rolled it back
    /// (a statement or lock timeout, a serialization failure) or never received it (no
    /// connection could be had).
    pub fn may_have_committed(&self) -> bool {
        match self {
            StoreError::Db(e) => !matches!(
                e.code(),
                Some(
                    &SqlState::QUERY_CANCELED
                        | &SqlState::LOCK_NOT_AVAILABLE
                        | &SqlState::T_R_SERIALIZATION_FAILURE
                        | &SqlState::T_R_DEADLOCK_DETECTED
                        | &SqlState::TOO_MANY_CONNECTIONS
                        | &SqlState::CANNOT_CONNECT_NOW
                )
            ),
            StoreError::Pool(_) | StoreError::Invalid(_) | StoreError::Config(_) => false,
            _ => true,
        }
    }

    /// A short, stable name for what went wrong: the `reason` label of
    /// `dcb_store_errors_total`. `connection_lost`, `server_shutdown`, `statement_timeout`,
    /// `lock_timeout`, `serialization`, `too_many_connections`, `idle_timeout`, `pool_timeout`,
    /// `connect_failed`, `database` (any other server error), `closed`, `invalid`, `config`,
    /// `migration`, `corrupt`, `no_database`.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Db(e) => db_error_reason(e),
            StoreError::Pool(e) => match e.as_ref() {
                deadpool_postgres::PoolError::Timeout(_) => "pool_timeout",
                deadpool_postgres::PoolError::Backend(e) => match db_error_reason(e) {
                    "database" | "connection_lost" => "connect_failed",
                    other => other,
                },
                _ => "connect_failed",
            },
            StoreError::Closed => "closed",
            StoreError::Invalid(_) => "invalid",
            StoreError::Config(_) => "config",
            StoreError::Migration(_) => "migration",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::NoDatabase(_) => "no_database",
        }
    }
}

fn db_error_reason(e: &tokio_postgres::Error) -> &'static str {
    let Some(code) = e.code() else {
        return if e.as_db_error().is_none() {
            "connection_lost"
        } else {
            "database"
        };
    };
    match *code {
        SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN | SqlState::CANNOT_CONNECT_NOW => {
            "server_shutdown"
        }
        SqlState::QUERY_CANCELED => "statement_timeout",
        SqlState::LOCK_NOT_AVAILABLE => "lock_timeout",
        SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED => "serialization",
        SqlState::TOO_MANY_CONNECTIONS => "too_many_connections",
        SqlState::IDLE_SESSION_TIMEOUT | SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT => {
            "idle_timeout"
        }
        SqlState::CONNECTION_EXCEPTION | SqlState::CONNECTION_FAILURE => "connection_lost",
        _ if e.is_closed() => "connection_lost",
        _ => "database",
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(Arc::new(e))
    }
}

/// The one place where SQLSTATEs are interpreted.
fn is_transient_db_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O error on the socket.
        return e.as_db_error().is_none();
    };
    [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_FAILURE,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::IDLE_SESSION_TIMEOUT,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    ]
    .contains(code)
}

/// An append did not store its events.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// An event matching the condition's query was stored after the condition's position: the
    /// decision was based on stale state. Read again and decide again.
    #[error("append condition failed: an event matching the condition was stored after {}",
        after.map_or_else(|| "the beginning".to_owned(), |p| format!("position {p}")))]
    ConditionFailed {
        /// The condition's `after`.
        after: Option<Position>,
    },
    /// An event id is already stored with other content, or only some of the append's events
    /// are (re-sending exactly events already stored, same ids, content and order, is a replay).
    #[error("event id {0} is already stored with other content")]
    DuplicateEventId(Uuid),
    /// The input was refused before reaching the database.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The database failed; see [`StoreError::is_transient`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AppendError {
    /// Whether this is a failed append condition.
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, AppendError::ConditionFailed { .. })
    }
}
