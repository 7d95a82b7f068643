//! The event store interface, with a PostgreSQL and an in-memory implementation.

mod memory;
mod postgres;

pub use memory::MemoryStore;
pub(crate) use postgres::Session;
pub use postgres::{PostgresStore, PostgresStoreBuilder};

use std::future::Future;

use futures::Stream;
use uuid::Uuid;

use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent};
use crate::query::Query;

/// How to read: bounds, direction and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    after: Option<Position>,
    up_to: Option<Position>,
    limit: Option<usize>,
    backwards: bool,
}

impl ReadOptions {
    /// Only events after this position (exclusive).
    #[must_use]
    pub fn after(mut self, position: Position) -> Self {
        self.after = Some(position);
        self
    }

    /// Like [`ReadOptions::after`], taking an optional position (a cursor that may not have moved yet).
    #[must_use]
    pub fn after_opt(mut self, position: Option<Position>) -> Self {
        self.after = position;
        self
    }

    /// Only events at or before this position (inclusive).
    #[must_use]
    pub fn up_to(mut self, position: Position) -> Self {
        self.up_to = Some(position);
        self
    }

    /// At most this many events.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Newest first.
    #[must_use]
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// The exclusive lower bound, if any.
    pub fn after_position(&self) -> Option<Position> {
        self.after
    }

    /// The inclusive upper bound, if any.
    pub fn up_to_position(&self) -> Option<Position> {
        self.up_to
    }

    /// The most events to return, if limited.
    pub fn max_events(&self) -> Option<usize> {
        self.limit
    }

    /// Whether events come newest first.
    pub fn is_backwards(&self) -> bool {
        self.backwards
    }
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadResult {
    /// The matching events, in position order (descending when reading backwards).
    pub events: Vec<SequencedEvent>,
    /// The last position in the store when the read was taken (at most `up_to`); `None` when
    /// nothing is stored there. Without a limit the answer is complete up to here: use it as the `after`
    /// of an [`AppendCondition`] to append only if the boundary did not change since this read.
    /// A forward read that stopped at its limit is complete only up to its last event.
    pub head: Option<Position>,
}

/// The connection pool of a store, as sampled for the `dcb_pool_connections` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open.
    pub size: usize,
    /// Connections idle in the pool.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// Events read page by page.
const STREAM_PAGE: usize = 1_000;

/// A DCB event store: reads by query, appends atomically, conditionally on a query.
///
/// Every implementation gives the same answers to the same calls; [`MemoryStore`] is the
/// reference model that [`PostgresStore`] is tested against.
pub trait EventStore: Send + Sync {
    /// The events matching `query`, with the head up to which the answer is complete.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for an invalid query; otherwise a database error.
    fn read(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> impl Future<Output = Result<ReadResult, StoreError>> + Send;

    /// Appends the events atomically, unconditionally.
    ///
    /// # Errors
    ///
    /// [`AppendError::Invalid`], [`AppendError::DuplicateEventId`], or a database error.
    fn append(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send;

    /// Appends the events atomically if no event matching the condition's query was stored
    /// after the condition's position.
    ///
    /// # Errors
    ///
    /// [`AppendError::ConditionFailed`] when the boundary changed (a normal outcome: read and
    /// decide again); otherwise as [`EventStore::append`].
    fn append_if(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send;

    /// Appends as [`EventStore::append_if`] does (or [`EventStore::append`], without a
    /// condition), recording `append_id` with the events: an id the caller gives this append and
    /// keeps when it sends it again. When its events are found stored, the answer tells who
    /// stored them: `replayed: false` if this very append did (its first send, whose answer was
    /// lost), `replayed: true` if another append did (another execution of the same idempotent
    /// command, say). Without an id a store cannot tell the two apart, and answers
    /// `replayed: true` for both.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append_if`].
    fn append_as(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send;

    /// The stored events with these ids, in position order (ids not stored are left out).
    /// This is how an append whose outcome is unknown (the connection dropped during `COMMIT`)
    /// is found out, and how a command re-executed under an idempotency key finds its first
    /// execution.
    ///
    /// # Errors
    ///
    /// A database error.
    fn read_ids(
        &self,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<SequencedEvent>, StoreError>> + Send;

    /// The connection pool's state, if the store has one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    /// The events matching `query` one by one, read in pages so memory stays bounded however
    /// many match. The stream ends at the head the first page saw, so it is finite and
    /// consistent even while writers append.
    fn read_stream<'a>(
        &'a self,
        query: &'a Query,
        options: ReadOptions,
    ) -> impl Stream<Item = Result<SequencedEvent, StoreError>> + Send + 'a
    where
        Self: Sized,
    {
        struct Cursor {
            options: ReadOptions,
            remaining: Option<usize>,
            buffered: std::vec::IntoIter<SequencedEvent>,
            done: bool,
        }
        let start = Cursor {
            options,
            remaining: options.limit,
            buffered: Vec::new().into_iter(),
            done: false,
        };
        futures::stream::try_unfold(start, move |mut cursor| async move {
            loop {
                if let Some(event) = cursor.buffered.next() {
                    return Ok(Some((event, cursor)));
                }
                if cursor.done || cursor.remaining == Some(0) {
                    return Ok(None);
                }
                let page = cursor.remaining.map_or(STREAM_PAGE, |r| r.min(STREAM_PAGE));
                let mut opts = cursor.options;
                opts.limit = Some(page);
                let result = self.read(query, opts).await?;
                // Pin the upper bound to the first page's head: later pages see the same world.
                if cursor.options.up_to.is_none() {
                    cursor.options.up_to = result.head;
                }
                cursor.done = result.events.len() < page;
                if let Some(last) = result.events.last() {
                    if opts.backwards {
                        cursor.options.up_to = Some(Position::new(last.position.get() - 1));
                    } else {
                        cursor.options.after = Some(last.position);
                    }
                }
                if let Some(r) = cursor.remaining.as_mut() {
                    *r -= result.events.len();
                }
                cursor.buffered = result.events.into_iter();
            }
        })
    }
}

/// Events per read statement. A cold boundary with a long history is read in pages, so that no
/// single statement grows with the history (a statement timeout would otherwise fail the same big
/// read on every retry); a warm boundary's read of what is new is one page.
const READ_PAGE: usize = 512;

/// Every event matching `query` after `after`, in one answer complete up to the head of its first
/// page (the command actors' cold and warm reads).
pub(crate) async fn read_complete<S: EventStore>(
    store: &S,
    query: &Query,
    after: Option<Position>,
) -> Result<ReadResult, StoreError> {
    let first = store
        .read(
            query,
            ReadOptions::default().after_opt(after).limit(READ_PAGE),
        )
        .await?;
    let head = first.head;
    let mut events = first.events;
    let mut last_page = events.len();
    while last_page == READ_PAGE {
        let (Some(from), Some(head)) = (events.last().map(|e| e.position), head) else {
            break;
        };
        let page = store
            .read(
                query,
                ReadOptions::default()
                    .after(from)
                    .up_to(head)
                    .limit(READ_PAGE),
            )
            .await?;
        last_page = page.events.len();
        events.extend(page.events);
    }
    Ok(ReadResult { events, head })
}
