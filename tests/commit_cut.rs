//! A connection lost while the server commits, on the real database, through a proxy that drops
//! the connection after the server committed and before the client hears of it
//! (`tests/support/cut_proxy.rs`):
//!
//! - the store answers a transient error; the events are stored, once; re-sending the same
//!   append (same events, same condition) over a new connection answers their original positions
//!   as a replay, not a failed condition. Controls: the same cut on a read, and on an append its
//!   condition refused, stores nothing.
//! - the runtime answers `Committed` with the stored positions: it re-sent the same events
//!   instead of deciding again.
//! - `execute_with_key`: a re-execution under a committed key answers the first one's positions,
//!   whatever the decision now decides, also when 32 run at once; keys are per decision type.
//! - `read_ids` answers the same on `MemoryStore` and `PostgresStore`.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cut_proxy::{Arm, CutProxy};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, Committed, Decision, Event, EventStore, ExecuteError,
    MemoryStore, P, Position, PostgresStore, Projection, Query, QueryItem, ReadOptions, Runtime,
    RuntimeBuilder, SequencedEvent, StoreError, keyed_event_id,
};
use futures::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A fresh database, a proxy in front of its server, and a store with a single connection that
/// goes through the proxy (so every statement of the store uses the one proxied connection).
async fn proxied() -> (TestDatabase, CutProxy, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let proxy = CutProxy::start(db.url()).await;
    let store = PostgresStore::builder(proxy.url(db.url()))
        .pool_size(1)
        .connect()
        .await
        .expect("store through the proxy");
    (db, proxy, store)
}

/// One stored row, read with SQL on a direct connection.
#[derive(Debug, PartialEq)]
struct Row {
    position: i64,
    id: Uuid,
    event_type: String,
    tags: Vec<String>,
    payload: Value,
}

/// The rows of `events`, in position order, over a direct (unproxied) connection.
async fn rows(db: &TestDatabase) -> Vec<Row> {
    let client = db.client().await.expect("direct client");
    client
        .query(
            "SELECT position, id, type, tags, payload FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("select events")
        .iter()
        .map(|r| Row {
            position: r.get(0),
            id: r.get(1),
            event_type: r.get(2),
            tags: r.get(3),
            payload: r.get(4),
        })
        .collect()
}

/// The rows holding `event` (by id), and those holding its content (type, tags and payload).
fn copies<'a>(rows: &'a [Row], event: &Event) -> (Vec<&'a Row>, Vec<&'a Row>) {
    let tags: Vec<String> = event.tags().iter().map(ToString::to_string).collect();
    let by_id = rows.iter().filter(|r| r.id == event.id()).collect();
    let by_content = rows
        .iter()
        .filter(|r| {
            r.event_type == event.event_type() && r.tags == tags && &r.payload == event.payload()
        })
        .collect();
    (by_id, by_content)
}

/// `event` is stored exactly once, by id and by content, and at `position`.
#[track_caller]
fn assert_stored_once(rows: &[Row], event: &Event, position: Position) {
    let (by_id, by_content) = copies(rows, event);
    assert_eq!(by_id.len(), 1, "rows with the id of {event:?}: {rows:#?}");
    assert_eq!(
        by_content.len(),
        1,
        "rows with the content of {event:?}: {rows:#?}"
    );
    assert_eq!(
        by_id[0], by_content[0],
        "the row with the id has the content"
    );
    assert_eq!(by_id[0].position, position.get(), "{event:?}");
}

/// `event` is not stored, by id nor by content.
#[track_caller]
fn assert_not_stored(rows: &[Row], event: &Event) {
    let (by_id, by_content) = copies(rows, event);
    assert!(
        by_id.is_empty() && by_content.is_empty(),
        "{event:?} is stored: {rows:#?}"
    );
}

/// A transient store error reporting a lost connection.
#[track_caller]
fn assert_connection_lost(e: &StoreError) {
    assert!(e.is_transient(), "a lost connection is transient: {e:?}");
    assert_eq!(e.reason(), "connection_lost", "{e:?}");
}

fn order_event(event_type: &str, order: &str, payload: Value) -> Event {
    Event::new(event_type, payload).tagged("order", order)
}

fn order_boundary(order: &str) -> Query {
    QueryItem::with_tags([P("order", order)]).into()
}

// ---------------------------------------------------------------------------------------------
// 1. The store: a cut after COMMIT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_append_cut_after_commit_is_stored_once_and_replays_when_resent() {
    let (db, proxy, store) = proxied().await;

    // Warm-up: the one connection prepares dcb_append's statement now, so that after arming the
    // append is a single round trip whose ReadyForQuery follows the commit.
    let warm = order_event("OrderOpened", "o1", json!({"by": "warm-up"}));
    assert_eq!(
        store.append(vec![warm.clone()]).await.expect("warm-up"),
        Appended {
            first: Position::new(1),
            last: Position::new(1),
            replayed: false
        }
    );
    let head = store
        .read(&Query::all(), ReadOptions::default().limit(0))
        .await
        .expect("head")
        .head;
    assert_eq!(head, Some(Position::new(1)));

    // The conditional append, cut after its commit. Cloned before sending: the re-send must be
    // the very same events.
    let events = vec![
        order_event("ItemAdded", "o1", json!({"sku": "A-1", "qty": 2})),
        order_event(
            "OrderPlaced",
            "o1",
            json!({"total": 19.5, "note": "naïve 🦀"}),
        )
        .tagged("customer", "c7"),
    ];
    let condition = AppendCondition::new(order_boundary("o1"), head);
    proxy.arm();
    let cut = store.append_if(events.clone(), condition.clone()).await;
    match &cut {
        Err(AppendError::Store(e)) => assert_connection_lost(e),
        other => panic!("expected a transient store error, got {other:?}"),
    }
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    assert_eq!(cuts[0].connection, 1, "the pool's one connection was cut");
    assert!(
        cuts[0].swallowed.ends_with('C'),
        "dcb_append ran to its end (command complete) before the cut: {cuts:?}"
    );

    // It committed: stored once, right after the warm-up.
    let stored = rows(&db).await;
    assert_eq!(stored.len(), 3, "{stored:#?}");
    assert_stored_once(&stored, &warm, Position::new(1));
    assert_stored_once(&stored, &events[0], Position::new(2));
    assert_stored_once(&stored, &events[1], Position::new(3));

    // Re-sent unchanged, over a new connection the pool opens by itself: the original positions,
    // a replay. The condition would fail now (the boundary holds the events since position 1),
    // and must not be what answers.
    let resent = store.append_if(events.clone(), condition.clone()).await;
    assert_eq!(
        resent.expect("the re-send is a replay"),
        Appended {
            first: Position::new(2),
            last: Position::new(3),
            replayed: true
        }
    );
    assert_eq!(proxy.accepted(), 2, "the pool replaced the cut connection");
    assert_eq!(rows(&db).await, stored, "the replay stored nothing");

    // Contrast: other events under the same condition are refused, the boundary did change.
    let fresh = vec![order_event(
        "ItemAdded",
        "o1",
        json!({"sku": "A-1", "qty": 2}),
    )];
    match store.append_if(fresh, condition).await {
        Err(AppendError::ConditionFailed { after }) => assert_eq!(after, head),
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(rows(&db).await, stored);
}

/// Control: the same cut on a read commits nothing; the store recovers.
#[tokio::test]
async fn a_read_cut_the_same_way_is_a_transient_error_and_stores_nothing() {
    let (db, proxy, store) = proxied().await;
    let seed = order_event("OrderOpened", "o2", json!({}));
    store.append(vec![seed.clone()]).await.expect("seed");
    let before = rows(&db).await;

    proxy.arm();
    match store
        .read(&order_boundary("o2"), ReadOptions::default())
        .await
    {
        Err(e) => assert_connection_lost(&e),
        Ok(read) => panic!("expected a transient error, the read answered {read:?}"),
    }
    assert_eq!(proxy.cuts().len(), 1);
    assert_eq!(rows(&db).await, before, "a cut read stores nothing");

    // The pool recovers: a new connection answers.
    let read = store
        .read(&order_boundary("o2"), ReadOptions::default())
        .await
        .expect("read after the cut");
    assert_eq!(read.events.len(), 1);
    assert_eq!(read.events[0].event, seed);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(rows(&db).await, before);
}

/// Control: an append its condition refused, cut the same way (its transaction commits, having
/// written nothing), is not stored, and re-sending it answers `ConditionFailed`, not a replay.
#[tokio::test]
async fn a_refused_append_cut_the_same_way_is_not_stored_and_a_resend_is_refused() {
    let (db, proxy, store) = proxied().await;
    store
        .append(vec![order_event("OrderOpened", "o3", json!({}))])
        .await
        .expect("seed (also prepares dcb_append)");
    let before = rows(&db).await;

    let events = vec![order_event("OrderPlaced", "o3", json!({"total": 1}))];
    // Stale: the boundary holds the seed after "the beginning".
    let stale = AppendCondition::new(order_boundary("o3"), None);
    proxy.arm();
    match store.append_if(events.clone(), stale.clone()).await {
        Err(AppendError::Store(e)) => assert_connection_lost(&e),
        other => panic!("expected a transient store error, got {other:?}"),
    }
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1);
    assert!(cuts[0].swallowed.ends_with('C'), "{cuts:?}");
    let after = rows(&db).await;
    assert_eq!(after, before, "nothing of the refused append is stored");
    assert_not_stored(&after, &events[0]);

    match store.append_if(events, stale).await {
        Err(AppendError::ConditionFailed { after: None }) => {}
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(rows(&db).await, before);
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// The pings of a counter: how many.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Pings(String);

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

fn pinged(counter: &str, n: u64) -> Event {
    Event::new("Pinged", json!({ "n": n })).tagged("counter", counter)
}

/// Always decides one more ping (never refuses): deciding again would store another event.
struct Ping {
    counter: String,
    /// Armed by the first `decide` that finds it pending: the append that follows is cut.
    arm: Option<(Arm, Arc<AtomicBool>)>,
    decides: Arc<AtomicUsize>,
}

impl Ping {
    fn new(counter: &str) -> Self {
        Self {
            counter: counter.to_owned(),
            arm: None,
            decides: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Cuts the append of its first decision.
    fn cutting(counter: &str, arm: Arm) -> Self {
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
// 2. The runtime: a cut after COMMIT
// ---------------------------------------------------------------------------------------------

/// The command's append is cut after its commit; the runtime re-sends the same events (never
/// deciding again) and answers the positions where they are stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_answers_committed_when_its_append_is_cut_after_commit() {
    let (db, proxy, store) = proxied().await;
    // Warm-up: prepares dcb_append on the one connection.
    store
        .append(vec![pinged("other", 1)])
        .await
        .expect("warm-up");
    let runtime = Runtime::builder(store).start().await.expect("runtime");

    for (round, key) in [None, Some("cut-key")].into_iter().enumerate() {
        let counter = format!("c{round}");
        let ping = Ping::cutting(&counter, proxy.arming());
        let decides = ping.decides.clone();
        let committed = match key {
            None => runtime.execute(ping).await,
            Some(key) => runtime.execute_with_key(key, ping).await,
        }
        .unwrap_or_else(|e| panic!("round {round}: expected Committed, got {e:?}"));
        let cuts = proxy.cuts();
        assert_eq!(cuts.len(), round + 1, "the append was cut: {cuts:?}");
        assert!(cuts[round].swallowed.ends_with('C'), "{cuts:?}");
        assert_eq!(decides.load(Ordering::SeqCst), 1, "decided once");
        assert!(
            !committed.replayed,
            "this execution committed: {committed:?}"
        );
        assert_eq!(committed.events.len(), 1);
        assert_eq!(committed.positions.len(), 1);
        assert_eq!(committed.events[0].payload(), &json!({"n": 1}));

        let stored = rows(&db).await;
        assert_stored_once(&stored, &committed.events[0], committed.positions[0]);
        let on_counter = stored
            .iter()
            .filter(|r| r.tags.contains(&format!("counter:{counter}")))
            .count();
        assert_eq!(on_counter, 1, "one ping on {counter}: {stored:#?}");
        assert_eq!(
            runtime
                .store()
                .read_ids(&[committed.events[0].id()])
                .await
                .expect("read_ids")
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>(),
            committed.positions
        );

        // The runtime goes on from the committed state.
        let next = runtime
            .execute(Ping::new(&counter))
            .await
            .expect("next ping");
        assert_eq!(next.events[0].payload(), &json!({"n": 2}));
        assert!(next.positions[0] > committed.positions[0]);
    }
    assert_eq!(proxy.cuts().len(), 2);
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. execute_with_key, on both stores
// ---------------------------------------------------------------------------------------------

macro_rules! on_both_stores {
    ($($(#[$attr:meta])* $check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn postgres() {
                let db = super::TestDatabase::create().await.expect("test database");
                let store = db.store().await.expect("store");
                let runtime = super::Runtime::builder(store).start().await.expect("runtime");
                super::$check(&runtime).await;
                super::assert_tables_agree(&db, runtime.store()).await;
                runtime.shutdown().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn memory() {
                let runtime = super::RuntimeBuilder::new(super::MemoryStore::new())
                    .start()
                    .await
                    .expect("runtime");
                super::$check(&runtime).await;
                runtime.shutdown().await;
            }
        }
    )*};
}

on_both_stores!(
    a_re_execution_that_would_be_rejected_answers_the_first,
    thirty_two_executions_of_one_key_commit_once,
    a_key_is_per_decision_type,
    a_re_execution_deciding_the_same_events_is_a_replay,
);

/// On PostgreSQL: the store's view is the table's.
async fn assert_tables_agree(db: &TestDatabase, store: &PostgresStore) {
    let stored = rows(db).await;
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read all")
        .events;
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

// ---------------------------------------------------------------------------------------------
// 4. read_ids on both stores
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_and_postgres_agree_on_read_ids() {
    let db = TestDatabase::create().await.expect("test database");
    let postgres = db.store().await.expect("store");
    let memory = MemoryStore::new();

    let history: Vec<Vec<Event>> = vec![
        vec![order_event("A", "x", json!(1))],
        vec![
            order_event("B", "x", json!({"b": [1, 2]})),
            Event::new("C", json!(null)),
            order_event("D", "y", json!("d")),
        ],
        vec![Event::new("E", json!({"e": "é"})).tagged("k", "v")],
        vec![
            order_event("F", "x", json!(6)),
            order_event("G", "z", json!(7)),
        ],
    ];
    for append in &history {
        let on_postgres = postgres.append(append.clone()).await.expect("append");
        let on_memory = memory.append(append.clone()).await.expect("append");
        assert_eq!(on_postgres, on_memory);
    }
    let all: Vec<Event> = history.into_iter().flatten().collect();
    let id = |i: usize| all[i].id();
    let unknown = Uuid::now_v7;

    let requests: Vec<Vec<Uuid>> = vec![
        vec![],
        vec![unknown()],
        vec![id(3)],
        // Out of order, with unknown ids among them and one id twice.
        vec![id(6), unknown(), id(0), id(4), id(0), unknown(), id(2)],
        all.iter().rev().map(Event::id).collect(),
    ];
    for ids in requests {
        let on_postgres = postgres.read_ids(&ids).await.expect("read_ids");
        let on_memory = memory.read_ids(&ids).await.expect("read_ids");
        let shape = |found: &[SequencedEvent]| -> Vec<(Position, Event)> {
            found
                .iter()
                .map(|e| (e.position, e.event.clone()))
                .collect()
        };
        // Each id asked for that is stored, once, in position order.
        let mut expected: Vec<(Position, Event)> = all
            .iter()
            .enumerate()
            .filter(|(_, e)| ids.contains(&e.id()))
            .map(|(i, e)| (Position::new(i64::try_from(i).unwrap() + 1), e.clone()))
            .collect();
        expected.sort_by_key(|(p, _)| *p);
        assert_eq!(shape(&on_memory), expected, "memory, ids {ids:?}");
        assert_eq!(shape(&on_postgres), expected, "postgres, ids {ids:?}");
    }
}
