//! `execute_with_key`, on PostgreSQL and on `MemoryStore`: a re-execution under a committed key
//! answers the first one's positions (a replay), whatever the decision now decides: also when it
//! would now be rejected, and when 32 run at once (one of them commits); keys are per decision
//! type.

// `pings` names the proxy's `Arm` (for `Ping::cutting`, which no check here uses).
#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/event_rows.rs"]
mod event_rows;
#[path = "support/pings.rs"]
mod pings;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Committed, Decision, Event, EventStore, ExecuteError, P, Projection, Query, QueryItem,
    ReadOptions, Runtime, RuntimeBuilder, SequencedEvent, keyed_event_id,
};
use event_rows::rows;
use futures::future::join_all;
use pings::{Ping, Pings};
use serde_json::json;
use stores::all_events;

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// Whether a thing was created.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Thing(String);

impl Projection for Thing {
    type State = bool;
    fn query(&self) -> Query {
        QueryItem::new(["Created"], [P("thing", self.0.clone())]).into()
    }
    fn initial_state(&self) -> bool {
        false
    }
    fn evolve(&self, created: &mut bool, _event: &SequencedEvent) {
        *created = true;
    }
}

#[derive(Debug, PartialEq, Eq)]
struct AlreadyCreated;

/// Creates a thing once; refuses when it exists.
struct Create(String);

impl Decision for Create {
    const NAME: &'static str = "create";
    type Projection = Thing;
    type Rejection = AlreadyCreated;

    fn projection(&self) -> Thing {
        Thing(self.0.clone())
    }

    fn decide(&self, created: &bool) -> Result<Vec<Event>, AlreadyCreated> {
        if *created {
            return Err(AlreadyCreated);
        }
        Ok(vec![
            Event::new("Created", json!({ "thing": self.0 })).tagged("thing", self.0.clone()),
        ])
    }
}

/// Decides the same events every time (no state, no refusal).
struct Fixed(String);

impl Decision for Fixed {
    const NAME: &'static str = "fixed";
    type Projection = Thing;
    type Rejection = ();

    fn projection(&self) -> Thing {
        Thing(self.0.clone())
    }

    fn decide(&self, _: &bool) -> Result<Vec<Event>, ()> {
        Ok(vec![
            Event::new("Noted", json!({ "thing": self.0 })).tagged("thing", self.0.clone()),
            Event::new("Noted", json!({ "thing": self.0, "again": true }))
                .tagged("thing", self.0.clone()),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// The checks, on both stores
// ---------------------------------------------------------------------------------------------

// Each check on a runtime on a fresh PostgreSQL store, whose tables must then agree with what the
// store reads, and on a runtime on a fresh `MemoryStore`.
on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    |check, store, db| {
        let runtime = RuntimeBuilder::new(store).start().await.expect("runtime");
        check(&runtime).await;
        if let Some(db) = db {
            assert_tables_agree(db, runtime.store()).await;
        }
        runtime.shutdown().await;
    };
    a_re_execution_that_would_be_rejected_answers_the_first,
    thirty_two_executions_of_one_key_commit_once,
    a_key_is_per_decision_type,
    a_re_execution_deciding_the_same_events_is_a_replay,
);

/// On PostgreSQL: the store's view is the table's.
async fn assert_tables_agree<S: EventStore>(db: &TestDatabase, store: &S) {
    let stored = rows(db).await;
    let read = all_events(store).await;
    assert_eq!(stored.len(), read.len());
    for (row, e) in stored.iter().zip(&read) {
        assert_eq!((row.position, row.id), (e.position.get(), e.event.id()));
    }
}

async fn events_matching<S: EventStore>(store: &S, query: Query) -> Vec<SequencedEvent> {
    store
        .read(&query, ReadOptions::default())
        .await
        .expect("read")
        .events
}

/// `outcome` is a replay of `first`.
#[track_caller]
fn assert_replay_of<R: std::fmt::Debug>(
    outcome: Result<Committed, ExecuteError<R>>,
    first: &Committed,
) {
    let replay = outcome.unwrap_or_else(|e| panic!("expected a replay of {first:?}, got {e:?}"));
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(replay.positions, first.positions, "the first positions");
    assert_eq!(replay.events, first.events, "the first events");
}

async fn a_re_execution_that_would_be_rejected_answers_the_first<S: EventStore + 'static>(
    runtime: &Runtime<S>,
) {
    let first = runtime
        .execute_with_key("k1", Create("t1".into()))
        .await
        .expect("created");
    assert!(!first.replayed);
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].id(), keyed_event_id(Create::NAME, "k1", 0));

    // The thing exists now: the decision refuses, but the key was committed.
    for _ in 0..2 {
        assert_replay_of(
            runtime.execute_with_key("k1", Create("t1".into())).await,
            &first,
        );
    }
    // Under another key, or none, the refusal stands.
    for key in ["k2", "k2"] {
        match runtime.execute_with_key(key, Create("t1".into())).await {
            Err(ExecuteError::Rejected(AlreadyCreated)) => {}
            other => panic!("expected a rejection under {key}, got {other:?}"),
        }
    }
    match runtime.execute(Create("t1".into())).await {
        Err(ExecuteError::Rejected(AlreadyCreated)) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    let created = events_matching(runtime.store(), Thing("t1".into()).query()).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].position, first.positions[0]);
    assert_eq!(created[0].event, first.events[0]);
}

/// A decision deciding exactly the same events again (the store replays them) answers a replay.
async fn a_re_execution_deciding_the_same_events_is_a_replay<S: EventStore + 'static>(
    runtime: &Runtime<S>,
) {
    let first = runtime
        .execute_with_key("same", Fixed("t2".into()))
        .await
        .expect("noted");
    assert!(!first.replayed);
    assert_eq!(first.positions.len(), 2);
    let again = runtime
        .execute_with_key("same", Fixed("t2".into()))
        .await
        .expect("a re-execution commits nothing new");
    assert_eq!(again.positions, first.positions);
    assert_eq!(again.events, first.events);
    assert!(
        again.replayed,
        "the key was committed by the first execution: {again:?}"
    );
    let noted = QueryItem::new(["Noted"], [P("thing", "t2")]).into();
    assert_eq!(events_matching(runtime.store(), noted).await.len(), 2);
}

async fn thirty_two_executions_of_one_key_commit_once<S: EventStore + 'static>(
    runtime: &Runtime<S>,
) {
    let outcomes = join_all((0..32).map(|_| {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.execute_with_key("once", Ping::new("k32")).await })
    }))
    .await;
    let committed: Vec<Committed> = outcomes
        .into_iter()
        .map(|o| o.expect("task").expect("every execution answers Ok"))
        .collect();
    let first = &committed[0];
    assert_eq!(first.positions.len(), 1);
    for c in &committed {
        assert_eq!(c.positions, first.positions, "{committed:#?}");
        assert_eq!(c.events, first.events, "{committed:#?}");
    }
    let fresh: Vec<&Committed> = committed.iter().filter(|c| !c.replayed).collect();
    assert_eq!(fresh.len(), 1, "one execution committed: {committed:#?}");
    assert_eq!(fresh[0].events[0].payload(), &json!({"n": 1}));

    let stored = events_matching(runtime.store(), Pings("k32".into()).query()).await;
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0].position, first.positions[0]);
    assert_eq!(stored[0].event, first.events[0]);
}

async fn a_key_is_per_decision_type<S: EventStore + 'static>(runtime: &Runtime<S>) {
    let created = runtime
        .execute_with_key("shared", Create("t3".into()))
        .await
        .expect("created");
    let pinged = runtime
        .execute_with_key("shared", Ping::new("t3"))
        .await
        .expect("pinged");
    assert!(
        !created.replayed && !pinged.replayed,
        "{created:?} {pinged:?}"
    );
    assert_eq!(
        created.events[0].id(),
        keyed_event_id(Create::NAME, "shared", 0)
    );
    assert_eq!(
        pinged.events[0].id(),
        keyed_event_id(Ping::NAME, "shared", 0)
    );
    assert_ne!(created.events[0].id(), pinged.events[0].id());
    assert_ne!(created.positions, pinged.positions);

    // Each re-execution finds its own.
    assert_replay_of(
        runtime
            .execute_with_key("shared", Create("t3".into()))
            .await,
        &created,
    );
    assert_replay_of(
        runtime.execute_with_key("shared", Ping::new("t3")).await,
        &pinged,
    );
    let all = events_matching(runtime.store(), Query::all()).await;
    assert_eq!(all.len(), 2, "{all:#?}");
}
