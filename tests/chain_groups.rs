//! Commands of one chain fold one state per (state type, leaves), not per union query, on
//! PostgreSQL and on `MemoryStore` (a regression of a fix in `src/runtime/command_actor.rs`): two
//! decisions reading the same pair of projections in swapped order (same union query when a
//! component's query holds the other's) each decide on their own components, cold and with every
//! leaf warm after another writer appended. Every decision records the state it decided on in its
//! event, and the test recomputes it from the events stored before that event.
//!
//! A chain is forced with one actor and a gate (`tests/support/chain.rs`): a first command holds
//! the actor inside `decide` while the others queue behind it; opening the gate lets them run as
//! one chain.

#[path = "support/chain.rs"]
mod chain;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/recording.rs"]
mod recording;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::collections::BTreeSet;
use std::sync::Arc;

use chain::{as_one_chain, at, committed, submit};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, P, Projection, Query, QueryItem, RuntimeBuilder, SequencedEvent,
};
use gate::Gate;
use recording::Recording;
use serde_json::json;
use stores::all_events;

// Each check on a fresh PostgreSQL database and on a fresh `MemoryStore`, the store wrapped in
// `Recording`; on PostgreSQL the check also gets the database, for SQL checks.
on_both_stores!(
    |check, store, db| {
        check(Recording::new(store), db).await;
    };
    swapped_tuples_in_one_chain_decide_on_their_own_components,
);

/// The events carrying every tag of at least one of the sets (`t:<value>` tags), counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tagged(Vec<Vec<&'static str>>);

impl Tagged {
    /// Events carrying all of these tags.
    fn all_of(values: &[&'static str]) -> Self {
        Self(vec![values.to_vec()])
    }

    /// Events carrying any of these tags.
    fn any_of(values: &[&'static str]) -> Self {
        Self(values.iter().map(|v| vec![*v]).collect())
    }
}

impl Projection for Tagged {
    type State = u64;

    fn query(&self) -> Query {
        Query::from_items(
            self.0
                .iter()
                .map(|set| QueryItem::with_tags(set.iter().map(|v| P("t", *v)))),
        )
    }

    fn initial_state(&self) -> u64 {
        0
    }

    fn evolve(&self, count: &mut u64, _event: &SequencedEvent) {
        *count += 1;
    }
}

/// Records the two counts it decided on, by component. Its event carries `t:a`, so the probes
/// after it in a chain count it.
struct Probe {
    label: String,
    first: Tagged,
    second: Tagged,
    gate: Option<Arc<Gate>>,
}

impl Decision for Probe {
    const NAME: &'static str = "probe";
    type Projection = (Tagged, Tagged);
    type Rejection = ();

    fn projection(&self) -> (Tagged, Tagged) {
        (self.first.clone(), self.second.clone())
    }

    fn decide(&self, (first, second): &(u64, u64)) -> Result<Vec<Event>, ()> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        Ok(vec![
            Event::new(
                "Probed",
                json!({"label": self.label, "first": first, "second": second}),
            )
            .tagged("t", "a")
            .tagged("t", "probe"),
        ])
    }
}

fn noted(values: &[&str]) -> Event {
    values
        .iter()
        .fold(Event::new("Noted", json!({})), |e, v| e.tagged("t", *v))
}

/// `n` copies of [`noted`].
fn noted_n(n: usize, values: &[&str]) -> Vec<Event> {
    (0..n).map(|_| noted(values)).collect()
}

/// Pairs of projections, several in both orders. `(a, a|b)`, `(a|b, a)` and `(a|b, b)` read the
/// same union query (`a` or `b`): grouped by union query they would share one state.
fn probe_pairs() -> Vec<(&'static str, Tagged, Tagged)> {
    let a = || Tagged::all_of(&["a"]);
    let b = || Tagged::all_of(&["b"]);
    let a_and_b = || Tagged::all_of(&["a", "b"]);
    let a_or_b = || Tagged::any_of(&["a", "b"]);
    vec![
        ("a, a&b", a(), a_and_b()),
        ("a&b, a", a_and_b(), a()),
        ("a, a|b", a(), a_or_b()),
        ("a|b, a", a_or_b(), a()),
        ("a|b, b", a_or_b(), b()),
        ("a, a", a(), a()),
        ("b, a|b", b(), a_or_b()),
    ]
}

async fn swapped_tuples_in_one_chain_decide_on_their_own_components<S: EventStore + 'static>(
    store: S,
    _db: Option<&TestDatabase>,
) {
    let mut seed = noted_n(3, &["a"]);
    seed.extend(noted_n(2, &["a", "b"]));
    seed.extend(noted_n(4, &["b"]));
    store.append(seed).await.expect("seed");
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");

    // Round 0 starts cold; round 1 finds every leaf warm, and must fold what another writer
    // appended since.
    for round in 0..2 {
        if round == 1 {
            let mut more = noted_n(2, &["a"]);
            more.extend(noted_n(1, &["b"]));
            more.extend(noted_n(1, &["a", "b"]));
            runtime.store().append(more).await.expect("other writer");
        }
        let pairs = probe_pairs();
        let queued = pairs
            .iter()
            .map(|(label, first, second)| {
                submit(
                    &runtime,
                    None,
                    Probe {
                        label: format!("{round}: {label}"),
                        first: first.clone(),
                        second: second.clone(),
                        gate: None,
                    },
                )
            })
            .collect();
        let gate = Gate::closed();
        let holder = Probe {
            label: format!("{round}: hold"),
            first: Tagged::all_of(&["hold"]),
            second: Tagged::all_of(&["hold", "x"]),
            gate: Some(gate.clone()),
        };
        let outcomes = as_one_chain(&runtime, &gate, holder, queued).await;

        let events = all_events(runtime.store()).await;
        let mut transactions = BTreeSet::new();
        for ((label, first, second), outcome) in pairs.iter().zip(&outcomes) {
            let c = committed(outcome, label);
            assert_eq!(c.positions.len(), 1, "{label}: {c:?}");
            let probed = at(&events, c.positions[0]);
            transactions.insert(probed.recorded_at);
            let before: Vec<&SequencedEvent> = events
                .iter()
                .filter(|e| e.position < probed.position)
                .collect();
            let count = |t: &Tagged| {
                let q = t.query();
                before.iter().filter(|e| q.matches(&e.event)).count()
            };
            let payload = probed.event.payload();
            assert_eq!(
                (payload["first"].as_u64(), payload["second"].as_u64()),
                (
                    Some(u64::try_from(count(first)).expect("count")),
                    Some(u64::try_from(count(second)).expect("count"))
                ),
                "round {round}, probe ({label}) at {}: recorded (first, second) vs the events \
                 before it",
                probed.position
            );
        }
        // One append: one transaction (the appender never merges one actor's appends, which
        // wait for each other).
        assert_eq!(
            transactions.len(),
            1,
            "round {round}: the probes were not one chain"
        );
    }
    runtime.shutdown().await;
}
