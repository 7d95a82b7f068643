//! Errors of the store, one enum per outcome family.

use std::sync::Arc;

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::event::Position;
use crate::limits::ValidationError;

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
    /// The store's writer (its appender actor) had stopped before the request reached it: nothing
    /// was sent to the database.
    #[error("the store is closed")]
    Closed,
    /// The store's writer stopped after taking the request and before answering it: the append
    /// may or may not have committed.
    #[error("the store stopped before answering; the append may have committed")]
    AnswerLost,
    /// A builder was given a value it cannot work with.
    #[error("invalid setting {name} = {value}: {requirement}")]
    Setting {
        /// The builder method.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        requirement: &'static str,
    },
    /// No database to connect to and none could be started (see [`crate::local`]).
    #[error("no database available: {0}")]
    NoDatabase(String),
}

impl StoreError {
    /// Whether retrying the same operation may succeed: a lost connection, a server shutting
    /// down or restarting, a pool timeout, a cancelled statement or a lock timeout.
    ///
    /// An append that failed this way may or may not have committed (see
    /// [`StoreError::may_have_committed`]); re-sending the same events is safe because event ids
    /// make appends idempotent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => DbFault::of(e).transient,
            StoreError::Pool(_) | StoreError::Closed | StoreError::AnswerLost => true,
            _ => false,
        }
    }

    /// Whether an append that failed with this error may nevertheless have been committed: the
    /// connection broke (or the server went down) after the statement was sent, so its answer,
    /// not necessarily its commit, was lost. `false` when the database certainly rolled it back
    /// (a statement or lock timeout, a serialization failure) or never received it (no
    /// connection could be had, the store's writer had stopped).
    pub fn may_have_committed(&self) -> bool {
        match self {
            StoreError::Db(e) => !DbFault::of(e).rolled_back,
            StoreError::Pool(_)
            | StoreError::Invalid(_)
            | StoreError::Config(_)
            | StoreError::Setting { .. }
            | StoreError::Closed
            | StoreError::NoDatabase(_) => false,
            StoreError::AnswerLost | StoreError::Migration(_) | StoreError::Corrupt(_) => true,
        }
    }

    /// A short, stable name for what went wrong: the `reason` label of
    /// `dcb_store_errors_total`. `connection_lost`, `server_shutdown`, `statement_timeout`,
    /// `lock_timeout`, `serialization`, `too_many_connections`, `idle_timeout`, `pool_timeout`,
    /// `connect_failed`, `database` (any other server error), `closed`, `answer_lost`,
    /// `invalid`, `config`, `setting`, `migration`, `corrupt`, `no_database`.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Db(e) => DbFault::of(e).reason,
            StoreError::Pool(e) => match e.as_ref() {
                deadpool_postgres::PoolError::Timeout(_) => "pool_timeout",
                deadpool_postgres::PoolError::Backend(e) => match DbFault::of(e).reason {
                    "database" | "connection_lost" => "connect_failed",
                    other => other,
                },
                _ => "connect_failed",
            },
            StoreError::Closed => "closed",
            StoreError::AnswerLost => "answer_lost",
            StoreError::Invalid(_) => "invalid",
            StoreError::Config(_) => "config",
            StoreError::Setting { .. } => "setting",
            StoreError::Migration(_) => "migration",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::NoDatabase(_) => "no_database",
        }
    }
}

impl StoreError {
    /// Refuses a count of 0 for the builder setting `name`.
    pub(crate) fn at_least_one<T>(name: &'static str, value: T) -> Result<(), StoreError>
    where
        T: PartialEq + Default,
    {
        if value == T::default() {
            return Err(StoreError::Setting {
                name,
                value: "0".to_owned(),
                requirement: "at least 1",
            });
        }
        Ok(())
    }
}

/// What a database error means to the store. [`DbFault::of`] is the one place where SQLSTATEs
/// are interpreted; everything else asks it.
struct DbFault {
    /// The `reason` label.
    reason: &'static str,
    /// Retrying may succeed.
    transient: bool,
    /// The server certainly did not commit the statement: it rolled it back, or never ran it.
    rolled_back: bool,
}

impl DbFault {
    const fn new(reason: &'static str, transient: bool, rolled_back: bool) -> Self {
        Self {
            reason,
            transient,
            rolled_back,
        }
    }

    fn of(e: &tokio_postgres::Error) -> Self {
        let Some(code) = e.code() else {
            return if e.as_db_error().is_none() {
                // No SQLSTATE: the socket failed, maybe after the server committed.
                Self::new("connection_lost", true, false)
            } else {
                Self::new("database", false, false)
            };
        };
        match *code {
            // The server is stopping: a statement it was running may have committed first.
            SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN => {
                Self::new("server_shutdown", true, false)
            }
            // Refused at connection time: nothing ran.
            SqlState::CANNOT_CONNECT_NOW => Self::new("server_shutdown", true, true),
            SqlState::TOO_MANY_CONNECTIONS => Self::new("too_many_connections", true, true),
            // Cancelled or refused statements roll their transaction back.
            SqlState::QUERY_CANCELED => Self::new("statement_timeout", true, true),
            SqlState::LOCK_NOT_AVAILABLE => Self::new("lock_timeout", true, true),
            SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED => {
                Self::new("serialization", true, true)
            }
            SqlState::IDLE_SESSION_TIMEOUT | SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT => {
                Self::new("idle_timeout", true, false)
            }
            SqlState::CONNECTION_EXCEPTION | SqlState::CONNECTION_FAILURE => {
                Self::new("connection_lost", true, false)
            }
            _ if e.is_closed() => Self::new("connection_lost", true, false),
            _ => Self::new("database", false, false),
        }
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
