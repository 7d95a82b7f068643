//! The in-memory store: the reference model of the store's semantics, and a fast store for
//! tests of decisions.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use uuid::Uuid;

use super::{EventStore, ReadOptions, ReadResult};
use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent};
use crate::limits::Limits;
use crate::query::Query;
use crate::query::{validate_query_with, validate_read};
use crate::validate::validate_events;

/// An event store held in memory, with the same semantics as [`super::PostgresStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Event at position p is at index p - 1.
    events: Vec<SequencedEvent>,
    index_of_id: HashMap<Uuid, usize>,
    /// The `append_id` each event was stored with (see [`EventStore::append_as`]), by index.
    append_ids: Vec<Option<Uuid>>,
}

impl MemoryStore {
    /// An empty store with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated (see `store`), so a
        // poisoned lock is safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        append_id: Option<Uuid>,
    ) -> Result<Appended, AppendError> {
        validate_events(&events, &self.limits)?;
        if let Some(c) = &condition {
            validate_query_with(&c.fail_if_events_match, &self.limits)?;
        }
        let mut inner = self.lock();
        if let Some(outcome) = inner.replay_or_duplicate(&events, append_id) {
            return outcome;
        }
        if let Some(c) = condition {
            let after = c.after.map_or(0, Position::get);
            let changed = inner
                .events
                .iter()
                .rev()
                .take_while(|e| e.position.get() > after)
                .any(|e| c.fail_if_events_match.matches(&e.event));
            if changed {
                return Err(AppendError::ConditionFailed { after: c.after });
            }
        }
        Ok(inner.store(events, append_id))
    }
}

fn position_of(index: usize) -> Position {
    Position::new(i64::try_from(index).expect("fewer than 2^63 events in memory") + 1)
}

impl Inner {
    /// Mirrors `dcb_append`: the same events stored before, in order, are a replay (unless this
    /// very append stored them); any other overlap with stored ids is a duplicate.
    fn replay_or_duplicate(
        &self,
        events: &[Event],
        append_id: Option<Uuid>,
    ) -> Option<Result<Appended, AppendError>> {
        let found: Vec<usize> = events
            .iter()
            .filter_map(|e| self.index_of_id.get(&e.id()).copied())
            .collect();
        let first = *found.iter().min()?;
        let replay = found.len() == events.len()
            && events
                .iter()
                .enumerate()
                .all(|(k, e)| self.events.get(first + k).is_some_and(|s| &s.event == e));
        Some(if replay {
            Ok(Appended {
                first: position_of(first),
                last: position_of(first + events.len() - 1),
                replayed: append_id.is_none() || self.append_ids[first] != append_id,
                recorded_at: None,
            })
        } else {
            Err(AppendError::DuplicateEventId(self.events[first].event.id()))
        })
    }

    fn store(&mut self, events: Vec<Event>, append_id: Option<Uuid>) -> Appended {
        let first = self.events.len();
        let recorded_at = SystemTime::now();
        self.events.reserve(events.len());
        for event in events {
            let index = self.events.len();
            self.index_of_id.insert(event.id(), index);
            self.append_ids.push(append_id);
            self.events.push(SequencedEvent {
                position: position_of(index),
                recorded_at,
                event,
            });
        }
        Appended {
            first: position_of(first),
            last: position_of(self.events.len() - 1),
            replayed: false,
            recorded_at: Some(recorded_at),
        }
    }
}

impl EventStore for MemoryStore {
    async fn read_ids(&self, ids: &[Uuid]) -> Result<Vec<SequencedEvent>, StoreError> {
        let inner = self.lock();
        let mut found: Vec<SequencedEvent> = ids
            .iter()
            .filter_map(|id| inner.index_of_id.get(id))
            .map(|&index| inner.events[index].clone())
            .collect();
        found.sort_by_key(|e| e.position);
        found.dedup_by_key(|e| e.position);
        Ok(found)
    }

    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        validate_read(query, &self.limits)?;
        let inner = self.lock();
        let after = options.after.map_or(0, Position::get);
        let up_to = options.up_to.map_or(i64::MAX, Position::get);
        let in_range = |e: &&SequencedEvent| {
            e.position.get() > after && e.position.get() <= up_to && query.matches(&e.event)
        };
        let limit = options.limit.unwrap_or(usize::MAX);
        let events: Vec<SequencedEvent> = if options.backwards {
            inner
                .events
                .iter()
                .rev()
                .filter(in_range)
                .take(limit)
                .cloned()
                .collect()
        } else {
            inner
                .events
                .iter()
                .filter(in_range)
                .take(limit)
                .cloned()
                .collect()
        };
        // Positions are 1..=len, so the head is the smaller of len and up_to.
        let head = inner
            .events
            .last()
            .map(|e| e.position.get().min(up_to))
            .filter(|&h| h > 0)
            .map(Position::new);
        Ok(ReadResult { events, head })
    }

    async fn append(&self, events: Vec<Event>) -> Result<Appended, AppendError> {
        self.write(events, None, None)
    }

    async fn append_if(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<Appended, AppendError> {
        self.write(events, Some(condition), None)
    }

    async fn append_as(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, AppendError> {
        self.write(events, condition, Some(append_id))
    }
}
