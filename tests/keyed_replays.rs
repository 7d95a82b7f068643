//! A keyed command executed again, whose append the store answers as a replay, on PostgreSQL and
//! on `MemoryStore` (regressions of fixes in `src/runtime/command_actor.rs`):
//!
//! - deciding the same events again, queued in one chain with other commands: the others decide
//!   on the true state, not one that counts the keyed events twice (a rule "at most N" that double
//!   counting would break), and the keyed events are stored once;
//! - a keyed execution whose events another writer stored after its read (another process
//!   executing the same request) answers `replayed`, not a commit of its own.
//!
//! A chain is forced with one actor and a gate (`tests/support/chain.rs`): a first command holds
//! the actor inside `decide` while the others queue behind it; opening the gate lets them run as
//! one chain.

#[path = "support/bins.rs"]
mod bins;
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

use bins::{Items, Put, put_event};
use chain::{as_one_chain, at, committed, submit};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, Position, Projection, RuntimeBuilder, SequencedEvent,
    keyed_event_id,
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
    a_keyed_replay_in_a_chain_does_not_count_its_events_twice,
    a_keyed_execution_stored_by_another_writer_after_its_read_answers_replayed,
);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Duplicated(Vec<String>);

/// Records a bin's items, refusing if one is there twice. A tuple: another state (another
/// group of the chain) than `Put`'s.
struct Check(String);

impl Decision for Check {
    const NAME: &'static str = "check";
    type Projection = (Items, Items);
    type Rejection = Duplicated;

    fn projection(&self) -> (Items, Items) {
        (Items(self.0.clone()), Items(format!("{}-spare", self.0)))
    }

    fn decide(&self, (items, _): &(Vec<String>, Vec<String>)) -> Result<Vec<Event>, Duplicated> {
        let distinct: BTreeSet<&String> = items.iter().collect();
        if distinct.len() != items.len() {
            return Err(Duplicated(items.clone()));
        }
        Ok(vec![
            Event::new("Checked", json!({"items": items})).tagged("check", &*self.0),
        ])
    }
}

/// The items of `bin` put before `position`, from the stored events.
fn items_before(events: &[SequencedEvent], bin: &str, position: Position) -> Vec<String> {
    let mut items = Vec::new();
    let projection = Items(bin.to_owned());
    let query = projection.query();
    for e in events
        .iter()
        .filter(|e| e.position < position && query.matches(&e.event))
    {
        projection.evolve(&mut items, e);
    }
    items
}

async fn a_keyed_replay_in_a_chain_does_not_count_its_events_twice<S: EventStore + 'static>(
    store: S,
    db: Option<&TestDatabase>,
) {
    const CAP: usize = 3;
    store
        .append(vec![put_event("b1", "s")])
        .await
        .expect("seed");
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let first = runtime
        .execute_with_key("req-k", Put::new("b1", "k", CAP))
        .await
        .expect("the first execution commits");
    assert!(!first.replayed, "{first:?}");
    assert_eq!(first.positions.len(), 1);

    // One chain: the keyed command again (deciding the same event: the store replays it), a put
    // that fits under the cap only if "k" is counted once (s, k, o), and a check refusing any
    // item seen twice (another group of the chain).
    let gate = Gate::closed();
    let holder = Put {
        gate: Some(gate.clone()),
        ..Put::new("hold", "h", CAP)
    };
    let queued = vec![
        submit(&runtime, Some("req-k"), Put::new("b1", "k", CAP)),
        submit(&runtime, None, Put::new("b1", "o", CAP)),
        submit(&runtime, None, Check("b1".to_owned())),
    ];
    let outcomes = as_one_chain(&runtime, &gate, holder, queued).await;

    let again = committed(&outcomes[0], "the keyed re-execution");
    assert!(again.replayed, "a replay of the first execution: {again:?}");
    assert_eq!(again.attempts, 0, "{again:?}");
    assert_eq!(again.positions, first.positions, "the first positions");
    assert_eq!(again.events, first.events, "the first events");

    let other = committed(
        &outcomes[1],
        "a put fitting under the cap (rejected if the keyed event is counted twice)",
    );
    assert!(!other.replayed, "{other:?}");
    assert_eq!(other.positions.len(), 1);

    let check = committed(
        &outcomes[2],
        "a check of the bin (rejected if it sees the keyed event twice)",
    );
    let events = all_events(runtime.store()).await;
    let checked = at(&events, check.positions[0]);
    assert_eq!(
        checked.event.payload()["items"],
        json!(items_before(&events, "b1", checked.position)),
        "the check decided on the items stored before it"
    );

    // Stored once: s, k, o.
    assert_eq!(
        items_before(&events, "b1", Position::new(i64::MAX)),
        ["s", "k", "o"]
    );
    let keyed_id = keyed_event_id(Put::NAME, "req-k", 0);
    assert_eq!(
        events.iter().filter(|e| e.event.id() == keyed_id).count(),
        1,
        "the keyed event is stored once"
    );
    if let Some(db) = db {
        let client = db.client().await.expect("client");
        let n: i64 = client
            .query_one("SELECT count(*) FROM events WHERE id = $1", &[&keyed_id])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1, "rows with the keyed id");
    }
    runtime.shutdown().await;
}

/// The keyed command reads, then (held in `decide`) another writer stores its very events (same
/// key, same content: another process executing the same request): its append is a replay of
/// events it did not store, so it answers `replayed` (its ids are taken, see
/// `Runtime::execute_with_key`), not a commit of its own.
async fn a_keyed_execution_stored_by_another_writer_after_its_read_answers_replayed<
    S: EventStore + 'static,
>(
    store: S,
    _db: Option<&TestDatabase>,
) {
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let gate = Gate::closed();
    let held = tokio::spawn(submit(
        &runtime,
        Some("req-x"),
        Put {
            gate: Some(gate.clone()),
            ..Put::new("b2", "x", 5)
        },
    ));
    gate.arrived(1).await;
    let stored = runtime
        .store()
        .append(vec![put_event("b2", "x").with_id(keyed_event_id(
            Put::NAME,
            "req-x",
            0,
        ))])
        .await
        .expect("the other writer's copy");
    gate.open();
    let outcome = committed(&held.await.expect("task"), "the keyed execution");
    assert_eq!(outcome.positions, vec![stored.first], "{outcome:?}");
    assert!(
        outcome.replayed && outcome.attempts == 0,
        "another writer stored these events: a replay, not this execution's commit: {outcome:?}"
    );
    let events = all_events(runtime.store()).await;
    assert_eq!(events.len(), 1, "stored once: {events:?}");
    runtime.shutdown().await;
}
