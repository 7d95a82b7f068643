//! Bins holding at most a number of items, and the decision putting one in (which can hold its
//! actor at a gate, `tests/support/gate.rs`; the binary declares `mod gate` beside this module).
#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

use crate::gate::Gate;

/// The items put into a bin, in order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Items(pub String);

impl Projection for Items {
    type State = Vec<String>;

    fn query(&self) -> Query {
        QueryItem::new(["Put"], [P("bin", &*self.0)]).into()
    }

    fn initial_state(&self) -> Vec<String> {
        Vec::new()
    }

    fn evolve(&self, items: &mut Vec<String>, event: &SequencedEvent) {
        items.push(
            event.event.payload()["item"]
                .as_str()
                .expect("item")
                .to_owned(),
        );
    }
}

/// The event putting `item` into `bin`.
pub fn put_event(bin: &str, item: &str) -> Event {
    Event::new("Put", json!({"item": item})).tagged("bin", bin)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub items: Vec<String>,
}

/// Puts an item into a bin holding fewer than `cap`. Always the same event for the same item:
/// executed again under its key, it decides the events already stored (a replay).
pub struct Put {
    pub bin: String,
    pub item: String,
    pub cap: usize,
    /// Passed in `decide`, if any: a `Put` holding its actor.
    pub gate: Option<Arc<Gate>>,
}

impl Put {
    pub fn new(bin: &str, item: &str, cap: usize) -> Self {
        Self {
            bin: bin.to_owned(),
            item: item.to_owned(),
            cap,
            gate: None,
        }
    }
}

impl Decision for Put {
    const NAME: &'static str = "put";
    type Projection = Items;
    type Rejection = Full;

    fn projection(&self) -> Items {
        Items(self.bin.clone())
    }

    fn decide(&self, items: &Vec<String>) -> Result<Vec<Event>, Full> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        if items.len() >= self.cap {
            return Err(Full {
                items: items.clone(),
            });
        }
        Ok(vec![put_event(&self.bin, &self.item)])
    }
}
