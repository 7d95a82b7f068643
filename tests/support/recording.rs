//! A store that records the `after` bound of every read: how far back a command (or a chain of
//! them) had to read, which tells what a warm state was taken to have seen.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::Mutex;

use dcb_runtime::{
    AppendCondition, AppendError, Appended, Event, EventStore, Position, Query, ReadOptions,
    ReadResult, SequencedEvent, StoreError,
};
use uuid::Uuid;

/// A store that records the `after` bound of every read (how far back a chain had to read).
pub struct Recording<S> {
    inner: S,
    reads: Mutex<Vec<Option<Position>>>,
}

impl<S> Recording<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// The `after` of each read since the last call.
    pub fn take_reads(&self) -> Vec<Option<Position>> {
        std::mem::take(&mut *self.reads.lock().expect("reads"))
    }
}

impl<S: EventStore> EventStore for Recording<S> {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        self.reads
            .lock()
            .expect("reads")
            .push(options.after_position());
        self.inner.read(query, options).await
    }

    async fn append(&self, events: Vec<Event>) -> Result<Appended, AppendError> {
        self.inner.append(events).await
    }

    async fn append_if(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<Appended, AppendError> {
        self.inner.append_if(events, condition).await
    }

    async fn append_as(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, AppendError> {
        self.inner.append_as(append_id, events, condition).await
    }

    async fn read_ids(&self, ids: &[Uuid]) -> Result<Vec<SequencedEvent>, StoreError> {
        self.inner.read_ids(ids).await
    }
}
