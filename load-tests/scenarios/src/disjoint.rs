//! **disjoint** — every command on its own new tag: the no-contention baseline.
//!
//! `ThingCreated {}` tagged `thing:<id>`. Rule: a thing is created once.

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

/// Violations: things created more than once.
pub const INVARIANT_SQL: &str = "SELECT count(*) FROM (SELECT tags[1] FROM events \
     WHERE type = 'ThingCreated' GROUP BY 1 HAVING count(*) > 1) twice";

/// The event creating the thing `id`.
pub fn thing_created(id: &str) -> Event {
    Event::new("ThingCreated", json!({})).tagged("thing", id)
}

/// Creates the thing `id` unless it exists.
pub struct Create {
    id: String,
}

impl Create {
    /// A command for the thing `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }
}

/// Whether a boundary already holds an event.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Exists(Query);

impl Projection for Exists {
    type State = bool;
    fn query(&self) -> Query {
        self.0.clone()
    }
    fn initial_state(&self) -> bool {
        false
    }
    fn evolve(&self, state: &mut bool, _event: &SequencedEvent) {
        *state = true;
    }
}

/// Why a creation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyExists;

impl Decision for Create {
    const NAME: &'static str = "create";
    type Projection = Exists;
    type Rejection = AlreadyExists;

    fn projection(&self) -> Exists {
        Exists(QueryItem::with_tags([P("thing", &*self.id)]).into())
    }

    fn decide(&self, exists: &bool) -> Result<Vec<Event>, AlreadyExists> {
        if *exists {
            return Err(AlreadyExists);
        }
        Ok(vec![thing_created(&self.id)])
    }
}
