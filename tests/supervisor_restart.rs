//! A panicking decision: its caller gets `Panicked`, the supervisor restarts the actor (counted in
//! `dcb_actor_restarts_total`), and no other command is lost: those queued behind it commit, and
//! so do the ones after.

#[path = "support/gate.rs"]
mod gate;
#[path = "support/recorder.rs"]
mod recorder;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Committed, Decision, Event, ExecuteError, P, Projection, Query, QueryItem, Runtime,
    SequencedEvent,
};
use gate::{Gate, finish, poll_each_once};
use metrics_exporter_prometheus::PrometheusHandle;
use recorder::recorder;
use serde_json::json;

/// The tests of this binary count restarts on the one global recorder: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn restarts(metrics: &PrometheusHandle) -> f64 {
    let series = format!("{} ", dcb_runtime::metrics::ACTOR_RESTARTS_TOTAL);
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits (polling, bounded) until the restart counter reaches `expected`, then checks it stays
/// there: returns the value seen.
async fn restarts_settle(metrics: &PrometheusHandle, expected: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while restarts(metrics) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    restarts(metrics)
}

/// Counts the steps taken on the one hot boundary.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Steps;

impl Projection for Steps {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::new(["Stepped"], [P("hot", "1")]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, steps: &mut u64, _event: &SequencedEvent) {
        *steps += 1;
    }
}

struct Step {
    n: usize,
    panic: bool,
    gate: Option<Arc<Gate>>,
}

impl Step {
    fn ok(n: usize) -> Self {
        Self {
            n,
            panic: false,
            gate: None,
        }
    }

    fn panicking(n: usize) -> Self {
        Self {
            n,
            panic: true,
            gate: None,
        }
    }
}

impl Decision for Step {
    const NAME: &'static str = "step";
    type Projection = Steps;
    type Rejection = ();

    fn projection(&self) -> Steps {
        Steps
    }

    fn decide(&self, steps: &u64) -> Result<Vec<Event>, ()> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        assert!(!self.panic, "step {} was told to panic", self.n);
        Ok(vec![
            Event::new("Stepped", json!({ "n": self.n, "seen": steps }))
                .tagged("hot", "1")
                .tagged("step", self.n.to_string()),
        ])
    }
}

fn expect_panicked(outcome: Result<Committed, ExecuteError<()>>, n: usize) {
    match outcome {
        Err(ExecuteError::Panicked(message)) => assert!(
            message.contains(&format!("step {n} was told to panic")),
            "the panic's own message: {message}"
        ),
        other => panic!("expected Panicked, got {other:?}"),
    }
}

/// The steps stored, from SQL, in position order.
async fn stored_steps(db: &TestDatabase) -> Vec<i64> {
    db.client()
        .await
        .expect("client")
        .query(
            "SELECT (payload->>'n')::bigint FROM events WHERE type = 'Stepped' ORDER BY position",
            &[],
        )
        .await
        .expect("steps")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

async fn start(db: &TestDatabase) -> Runtime {
    let store = db.store().await.expect("store");
    Runtime::builder(store)
        .actors(1)
        .start()
        .await
        .expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_restarts_the_actor_and_the_next_hundred_commands_commit() {
    let _serial = SERIAL.lock().await;
    let metrics = recorder();
    let db = TestDatabase::create().await.expect("database");
    let runtime = start(&db).await;
    let before = restarts(metrics);

    expect_panicked(runtime.execute(Step::panicking(1_000)).await, 1_000);

    // The first is submitted right after the answer, while the actor may still be restarting; all
    // go to the same (only) actor.
    for n in 0..100 {
        let committed = runtime
            .execute(Step::ok(n))
            .await
            .unwrap_or_else(|e| panic!("command {n} after the panic: {e:?}"));
        assert_eq!(committed.positions.len(), 1);
        assert_eq!(committed.events[0].payload()["seen"], n);
    }

    assert_eq!(restarts_settle(metrics, before + 1.0).await, before + 1.0);
    assert_eq!(stored_steps(&db).await, (0..100).collect::<Vec<_>>());
    runtime.shutdown().await;
    assert_eq!(restarts(metrics), before + 1.0, "one panic, one restart");
}

/// Submitted together on one actor: the panicking command first, 20 normal ones behind it (in
/// the actor's queue or mailbox when it panics). None of the 20 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_queued_behind_a_panic_are_not_lost() {
    let _serial = SERIAL.lock().await;
    let metrics = recorder();
    let db = TestDatabase::create().await.expect("database");
    let runtime = start(&db).await;
    let before = restarts(metrics);

    let panicking = runtime.execute(Step::panicking(1_000));
    let normal = futures::future::join_all((0..20).map(|n| runtime.execute(Step::ok(n))));
    let (panicked, normal) = futures::join!(panicking, normal);

    expect_panicked(panicked, 1_000);
    for (n, outcome) in normal.into_iter().enumerate() {
        let committed = outcome.unwrap_or_else(|e| panic!("command {n} behind the panic: {e:?}"));
        assert_eq!(committed.positions.len(), 1);
    }
    assert_eq!(sorted(stored_steps(&db).await), (0..20).collect::<Vec<_>>());
    assert_eq!(restarts_settle(metrics, before + 1.0).await, before + 1.0);
    runtime.shutdown().await;
    assert_eq!(restarts(metrics), before + 1.0, "one panic, one restart");
}

/// The same, deterministically: the panicking decision waits at a gate until the 20 normal
/// commands have been submitted to its actor, then panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_submitted_while_a_decision_is_about_to_panic_are_not_lost() {
    let _serial = SERIAL.lock().await;
    let metrics = recorder();
    let db = TestDatabase::create().await.expect("database");
    let runtime = start(&db).await;
    let before = restarts(metrics);

    let gate = Gate::closed();
    let panicking = tokio::spawn({
        let runtime = runtime.clone();
        let step = Step {
            gate: Some(gate.clone()),
            ..Step::panicking(1_000)
        };
        async move { runtime.execute(step).await }
    });
    // The panicking decision is running (and blocked) on the only actor.
    gate.arrived(1).await;
    let normal = poll_each_once((0..20).map(|n| runtime.execute(Step::ok(n)))).await;
    assert!(
        normal.iter().all(|(_, output)| output.is_none()),
        "nothing can finish while the actor is blocked"
    );
    gate.open();

    expect_panicked(panicking.await.expect("task"), 1_000);
    for (n, outcome) in finish(normal).await.into_iter().enumerate() {
        let committed = outcome.unwrap_or_else(|e| panic!("command {n} behind the panic: {e:?}"));
        assert_eq!(committed.positions.len(), 1);
    }
    assert_eq!(sorted(stored_steps(&db).await), (0..20).collect::<Vec<_>>());
    assert_eq!(gate.arrivals(), 1, "the panicking command is not run again");
    assert_eq!(restarts_settle(metrics, before + 1.0).await, before + 1.0);
    runtime.shutdown().await;
    assert_eq!(restarts(metrics), before + 1.0, "one panic, one restart");
}
