//! Append conditions and what an append returns.

use std::time::SystemTime;

use crate::event::Position;
use crate::query::Query;

/// Makes an append fail unless no event matching `fail_if_events_match` is stored after `after`.
///
/// `after` is exclusive; with `None`, any matching event in the store fails the append. Use the
/// `head` of the read the decision was based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    /// The boundary that must not have changed.
    pub fail_if_events_match: Query,
    /// The position up to which the decision saw the boundary.
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fails the append if any event matching `query` is stored after `after`.
    pub fn new(query: Query, after: Option<Position>) -> Self {
        Self {
            fail_if_events_match: query,
            after,
        }
    }
}

/// Where an append's events were stored: positions `first..=last`, consecutive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first event.
    pub first: Position,
    /// Position of the last event.
    pub last: Position,
    /// True when the events had been stored by an earlier identical append (same ids, same
    /// content) and these are that append's positions: nothing was stored twice. Sent with
    /// [`crate::EventStore::append_as`], a re-send of that same append (same `append_id`) is not
    /// a replay: it answers `false`, as its lost first answer would have.
    pub replayed: bool,
    /// When this append stored its events, by the store's clock: the `recorded_at` a read
    /// returns for each of them. `None` when it stored nothing new (a replay, or a re-send whose
    /// first send stored them).
    pub recorded_at: Option<SystemTime>,
}

impl Appended {
    /// The positions, in order.
    pub fn positions(&self) -> impl Iterator<Item = Position> + use<> {
        (self.first.get()..=self.last.get()).map(Position::new)
    }
}
