//! A counter of pings, and a decision that always decides one more: deciding again would store
//! another event, so a stored count tells how often a command decided and appended. The decision
//! can arm a cut proxy in its first `decide` (the binary declares `mod cut_proxy` beside this
//! module).
#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

use crate::cut_proxy::Arm;

/// The pings of a counter: how many.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pings(pub String);

impl Projection for Pings {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::new(["Pinged"], [P("counter", self.0.clone())]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, count: &mut u64, _event: &SequencedEvent) {
        *count += 1;
    }
}

/// Ping number `n` of `counter`.
pub fn pinged(counter: &str, n: u64) -> Event {
    Event::new("Pinged", json!({ "n": n })).tagged("counter", counter)
}

/// Always decides one more ping (never refuses): deciding again would store another event.
pub struct Ping {
    counter: String,
    /// Armed by the first `decide` that finds it pending: the append that follows is cut.
    arm: Option<(Arm, Arc<AtomicBool>)>,
    /// How many times it decided.
    pub decides: Arc<AtomicUsize>,
}

impl Ping {
    pub fn new(counter: &str) -> Self {
        Self {
            counter: counter.to_owned(),
            arm: None,
            decides: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Cuts the append of its first decision.
    pub fn cutting(counter: &str, arm: Arm) -> Self {
        Self {
            arm: Some((arm, Arc::new(AtomicBool::new(true)))),
            ..Self::new(counter)
        }
    }
}

impl Decision for Ping {
    const NAME: &'static str = "ping";
    type Projection = Pings;
    type Rejection = ();

    fn projection(&self) -> Pings {
        Pings(self.counter.clone())
    }

    fn decide(&self, count: &u64) -> Result<Vec<Event>, ()> {
        self.decides.fetch_add(1, Ordering::SeqCst);
        if let Some((arm, pending)) = &self.arm
            && pending.swap(false, Ordering::SeqCst)
        {
            // The read is answered (decide runs on its result) and the append not yet sent: the
            // next response on the connection is the append's.
            arm.arm();
        }
        Ok(vec![pinged(&self.counter, count + 1)])
    }
}
