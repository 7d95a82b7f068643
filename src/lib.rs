#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Event`], [`Tag`], [`SequencedEvent`], [`Position`]: what is stored.
//! - [`Query`], [`QueryItem`]: consistency boundaries, with the seed's fluent filter
//!   ([`Query::matching`]).
//! - [`AppendCondition`], [`Appended`]: conditional appends and their outcome.
//! - [`EventStore`] with [`PostgresStore`] (group commit) and [`MemoryStore`] (the reference model).
//! - [`Limits`], [`ValidationError`]: what input is accepted.
//! - [`error`]: [`StoreError`] and [`AppendError`].
//! - [`metrics`]: metric names and descriptions.
//! - [`local`]: finding or starting a database; [`testing`]: a fresh database per test.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod append;
pub mod error;
mod event;
pub mod local;
pub mod metrics;
mod migrate;
mod query;
mod store;
pub mod testing;
mod validate;

pub use append::{AppendCondition, Appended};
pub use error::{AppendError, StoreError};
pub use event::{Event, P, Position, SequencedEvent, Tag};
pub use query::{Complete, Empty, Matching, Query, QueryItem, Typed};
pub use store::{
    EventStore, MemoryStore, PostgresStore, PostgresStoreBuilder, ReadOptions, ReadResult,
};
pub use validate::{Limits, ValidationError};
