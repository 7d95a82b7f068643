//! Where a subscription starts: one started "now" and one started at the beginning see the same
//! suffix; an at-least-once handler sees every event in position order; an in-memory view follows
//! the store.

use std::sync::{Arc, Mutex};

use dcb_runtime::subscription::{Handler, HandlerError, Start, Subscription, View};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore, P, Position, Query, QueryItem, Runtime, SequencedEvent};
use dcb_scenarios::transfer::{Account, Transfer, accounts};
use serde_json::json;

/// Collects the positions and ids it is handed.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<(i64, uuid::Uuid)>>>);

impl Handler for Collect {
    async fn handle(&mut self, events: &[SequencedEvent]) -> Result<(), HandlerError> {
        let mut seen = self.0.lock().expect("lock");
        seen.extend(events.iter().map(|e| (e.position.get(), e.event.id())));
        Ok(())
    }
}

fn numbered(i: usize) -> Event {
    let colour = if i.is_multiple_of(3) { "red" } else { "blue" };
    Event::new("Numbered", json!({ "i": i })).tagged("colour", colour)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_started_now_and_one_started_at_the_beginning_see_the_same_suffix() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    for i in 0..20 {
        store.append(vec![numbered(i)]).await.expect("append");
    }
    let red = Query::from(QueryItem::with_tags([P("colour", "red")]));
    let from_start = Collect::default();
    let from_now = Collect::default();
    let start = Subscription::new("from-start", red.clone())
        .batch_size(4)
        .run_at_least_once(&store, from_start.clone())
        .await
        .expect("from start");
    let now = Subscription::new("from-now", red)
        .start(Start::Now)
        .batch_size(4)
        .run_at_least_once(&store, from_now.clone())
        .await
        .expect("from now");
    for i in 20..50 {
        store.append(vec![numbered(i)]).await.expect("append");
    }
    start
        .caught_up_to(Position::new(50))
        .await
        .expect("caught up");
    now.caught_up_to(Position::new(50))
        .await
        .expect("caught up");

    let all = from_start.0.lock().expect("lock").clone();
    let suffix = from_now.0.lock().expect("lock").clone();
    // Every red event once, in position order.
    let expected: Vec<i64> = (1..=50).filter(|p| (p - 1) % 3 == 0).collect();
    assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), expected);
    let after: Vec<_> = all.iter().filter(|e| e.0 > 20).copied().collect();
    assert!(!after.is_empty());
    assert_eq!(suffix, after);
    start.shutdown().await;
    now.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_follows_the_decisions_it_projects() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    store.append(accounts(3, 100)).await.expect("accounts");
    let view = View::start(&store, Account("a1".into()))
        .await
        .expect("view");
    assert_eq!(view.state(), Some(100));
    let runtime = Runtime::builder(store.clone())
        .start()
        .await
        .expect("runtime");
    let mut last = view.position();
    for (from, to) in [("a1", "a2"), ("a0", "a1"), ("a2", "a0"), ("a1", "a0")] {
        let committed = runtime
            .execute(Transfer::new(from, to, 10))
            .await
            .expect("transfer");
        last = committed.positions.last().copied().unwrap_or(last);
    }
    view.caught_up_to(last).await.expect("caught up");
    assert_eq!(view.state(), Some(90));
    assert!(view.position() >= last);
    runtime.shutdown().await;
}

/// Counts events, and panics on one of type `Bad`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Fussy;

impl dcb_runtime::Projection for Fussy {
    type State = u64;
    fn query(&self) -> Query {
        Query::all()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, count: &mut u64, event: &SequencedEvent) {
        assert_ne!(event.event.event_type(), "Bad", "a bad event");
        *count += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_projection_panics_stops_with_its_state_before_the_page() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    for i in 0..3 {
        store.append(vec![numbered(i)]).await.expect("append");
    }
    let view = View::start(&store, Fussy).await.expect("view");
    assert_eq!((view.state(), view.position()), (3, Position::new(3)));
    let appended = store
        .append(vec![numbered(3), Event::new("Bad", json!({})), numbered(4)])
        .await
        .expect("append");
    let stopped = view
        .caught_up_to(Position::new(appended.first.get() + 2))
        .await
        .expect_err("the view stops");
    assert_eq!(stopped.position, Position::new(3));
    // Nothing of the failing page was applied.
    assert_eq!(view.state(), 3);
}
