//! Overload: with a full queue, `execute` refuses at once with `Overloaded`; what it accepted it
//! completes.

#[path = "support/gate.rs"]
mod gate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, ExecuteError, P, Projection, Query, QueryItem, Runtime, SequencedEvent,
};
use gate::{Gate, finish, poll_each_once};
use serde_json::json;

const CAPACITY: usize = 10;
const SUBMISSIONS: usize = 1_000;
/// The bound on answering a surplus command (from the issue: a behaviour, not a benchmark).
const REFUSAL_BOUND: Duration = Duration::from_millis(100);

#[derive(Clone, PartialEq, Eq, Hash)]
struct Orders;

impl Projection for Orders {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::new(["Ordered"], [P("shop", "1")]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, orders: &mut u64, _event: &SequencedEvent) {
        *orders += 1;
    }
}

/// An order whose `decide` waits at the test's gate.
struct Order {
    n: usize,
    gate: Arc<Gate>,
}

impl Decision for Order {
    const NAME: &'static str = "order";
    type Projection = Orders;
    type Rejection = ();

    fn projection(&self) -> Orders {
        Orders
    }

    fn decide(&self, _orders: &u64) -> Result<Vec<Event>, ()> {
        self.gate.pass();
        Ok(vec![
            Event::new("Ordered", json!({ "n": self.n })).tagged("shop", "1"),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_at_once_and_completes_what_it_accepted() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let runtime = Runtime::builder(store)
        .queue_capacity(CAPACITY)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let gate = Gate::closed();

    // 1,000 submissions within one poll of this task, each timed from its own start.
    let submissions = (0..SUBMISSIONS).map(|n| {
        let runtime = runtime.clone();
        let gate = gate.clone();
        async move {
            let started = Instant::now();
            let outcome = runtime.execute(Order { n, gate }).await;
            (outcome, started.elapsed())
        }
    });
    let polled = poll_each_once(submissions).await;

    // How many can be accepted: the actor's slot counts the commands it holds (queued, deciding
    // or appending), incremented on admission and decremented only when a command is answered.
    // Admission refuses when the count is already CAPACITY. No command can be answered while
    // the gate is closed (each chain decides before it appends, and the first decide waits at
    // the gate), so exactly CAPACITY are admitted: no slack is needed, whatever the timing of
    // the actor's chains.
    let pending = polled.iter().filter(|(_, o)| o.is_none()).count();
    let refused_at_once = SUBMISSIONS - pending;
    assert_eq!(
        pending, CAPACITY,
        "commands accepted while the queue of {CAPACITY} is full"
    );
    // Every surplus command was answered within its first poll, before any capacity was freed.
    for (_, outcome) in &polled {
        if let Some((outcome, elapsed)) = outcome {
            assert!(
                matches!(outcome, Err(ExecuteError::Overloaded)),
                "a surplus command: {outcome:?}"
            );
            assert!(*elapsed < REFUSAL_BOUND, "refused after {elapsed:?}");
        }
    }
    // The accepted ones are all waiting on one decide (a chain's first), none is lost.
    gate.arrived(1).await;
    assert_eq!(
        gate.arrivals(),
        1,
        "the actor decides one command at a time"
    );

    gate.open();
    let outcomes = finish(polled).await;

    let (mut accepted, mut overloaded) = (0, 0);
    let mut slowest_refusal = Duration::ZERO;
    let mut committed_orders = Vec::new();
    for (outcome, elapsed) in outcomes {
        match outcome {
            Ok(committed) => {
                assert_eq!(committed.positions.len(), 1);
                committed_orders.push(committed.events[0].payload()["n"].as_i64().expect("n"));
                accepted += 1;
            }
            Err(ExecuteError::Overloaded) => {
                slowest_refusal = slowest_refusal.max(elapsed);
                overloaded += 1;
            }
            Err(e) => panic!("unexpected outcome: {e:?}"),
        }
    }
    eprintln!(
        "accepted {accepted}, overloaded {overloaded} (refused at once: {refused_at_once}), \
         slowest refusal {slowest_refusal:?}"
    );
    assert_eq!(accepted + overloaded, SUBMISSIONS);
    assert_eq!(accepted, CAPACITY);
    assert!(slowest_refusal < REFUSAL_BOUND, "{slowest_refusal:?}");

    // Exactly the accepted commands are stored.
    let client = db.client().await.expect("client");
    let mut stored: Vec<i64> = client
        .query(
            "SELECT (payload->>'n')::bigint FROM events WHERE type = 'Ordered'",
            &[],
        )
        .await
        .expect("orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    stored.sort_unstable();
    committed_orders.sort_unstable();
    assert_eq!(stored, committed_orders);

    // Capacity is free again: a new command is accepted and commits.
    let committed = runtime
        .execute(Order {
            n: SUBMISSIONS,
            gate: gate.clone(),
        })
        .await
        .expect("accepted once the queue drained");
    assert_eq!(committed.positions.len(), 1);
    runtime.shutdown().await;
}
