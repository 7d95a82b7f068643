#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Event`], [`Tag`], [`SequencedEvent`], [`Position`]: what is stored.
//! - [`Query`], [`QueryItem`]: consistency boundaries, with the seed's fluent filter
//!   ([`Query::matching`]).
//! - [`AppendCondition`], [`Appended`]: conditional appends and their outcome.
//! - [`EventStore`] with [`PostgresStore`] (group commit by its appender actor) and [`MemoryStore`] (the reference model).
//! - [`Decision`], [`Projection`]: the decider pattern.
//! - [`Runtime`]: command actors (chains, warm boundaries), supervisor, back-off ([`RetryPolicy`]).
//! - [`Limits`], [`ValidationError`]: what input is accepted.
//! - [`error`]: [`StoreError`] and [`AppendError`].
//! - [`subscription`]: the read side: subscriptions (transactional or at least once) and
//!   in-memory views.
//! - [`metrics`]: metric names and descriptions.
//! - [`local`]: finding or starting a database; [`testing`]: a fresh database per test.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod append;
mod decision;
pub mod error;
mod event;
mod event_index;
mod limits;
mod lines;
pub mod local;
pub mod metrics;
mod migrate;
mod peer;
mod query;
mod redact;
mod runtime;
mod store;
pub mod subscription;
pub mod testing;
mod validate;

pub use append::{AppendCondition, Appended};
pub use decision::{Decision, Projection, default_key, default_keys, union};
#[doc(hidden)]
pub use decision::{Leaf, PartState};
pub use error::{AppendError, StoreError};
pub use event::{Event, P, Position, SequencedEvent, Tag};
pub use limits::{Limits, MAX_READABLE_DEPTH, ValidationError};
pub use query::{Complete, Empty, Matching, Query, QueryItem, Typed};
pub use runtime::{
    CommandOutcome, Committed, ExecuteError, RetryPolicy, Runtime, RuntimeBuilder, default_actors,
    keyed_event_id,
};
pub use store::{
    EventStore, MemoryStore, PoolStatus, PostgresStore, PostgresStoreBuilder, ReadOptions,
    ReadResult,
};
/// The PostgreSQL client the transactional handlers of [`subscription`] write through.
pub use tokio_postgres;
