//! A command actor does not wait for a chain's append: while it is out (here held by a lock on
//! the events table, on the real database), the actor decides the commands on other boundaries,
//! and holds back those that would read what the append writes until it is answered. An append
//! out when its actor stops is answered all the same, and never decided again.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/pings.rs"]
mod pings;

use std::sync::Arc;
use std::time::Duration;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, Projection, Query, ReadOptions, Runtime,
    default_keys,
};
use dcb_runtime::{PostgresStore, tokio_postgres};
use gate::{finish, poll_each_once};
use pings::{Pings, pinged};
use tokio::sync::watch;

/// Counts the pings of `reads` and decides one more ping of `writes`, holding the key of
/// `holds`; notes each count it decided on.
struct Counted {
    reads: &'static str,
    writes: &'static str,
    holds: &'static str,
    decided: Arc<watch::Sender<Vec<u64>>>,
}

impl Counted {
    fn new(reads: &'static str, writes: &'static str, holds: &'static str) -> Self {
        Self {
            reads,
            writes,
            holds,
            decided: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    /// Waits until it decided `n` times (bounded: a failure, not a hang).
    async fn decided(decided: &watch::Sender<Vec<u64>>, n: usize, what: &str) -> Vec<u64> {
        let mut seen = decided.subscribe();
        tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|d| d.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("{what} was not decided"))
            .expect("the decision lives")
            .clone()
    }
}

impl Decision for Counted {
    const NAME: &'static str = "counted";
    type Projection = Pings;
    type Rejection = ();

    fn projection(&self) -> Pings {
        Pings(self.reads.to_owned())
    }

    fn decide(&self, count: &u64) -> Result<Vec<Event>, ()> {
        self.decided.send_modify(|d| d.push(*count));
        Ok(vec![pinged(self.writes, count + 1)])
    }

    fn consistency_keys(&self, _condition: &Query) -> Vec<u64> {
        default_keys(&Pings(self.holds.to_owned()).query())
    }
}

/// Panics in `decide`: its actor stops, and the supervisor starts another.
struct Panics;

impl Decision for Panics {
    const NAME: &'static str = "panics";
    type Projection = Pings;
    type Rejection = ();

    fn projection(&self) -> Pings {
        Pings("p".to_owned())
    }

    fn decide(&self, _count: &u64) -> Result<Vec<Event>, ()> {
        panic!("a decision that panics")
    }
}

/// A runtime of one actor on a fresh database, and a session holding a lock that every append
/// waits for (reads do not).
async fn blocked_appends() -> (TestDatabase, Runtime<PostgresStore>, tokio_postgres::Client) {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let runtime = Runtime::builder(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let blocker = db.client().await.expect("client");
    blocker
        .batch_execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    (db, runtime, blocker)
}

/// Starts `decision` on its way and waits until it was decided once.
async fn decided_once(
    runtime: &Runtime<PostgresStore>,
    decision: Counted,
    what: &str,
) -> tokio::task::JoinHandle<Result<dcb_runtime::Committed, ExecuteError<()>>> {
    let decided = decision.decided.clone();
    let run = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(decision).await }
    });
    Counted::decided(&decided, 1, what).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_an_append_is_out_its_actor_decides_a_command_on_another_boundary() {
    let (_db, runtime, blocker) = blocked_appends().await;
    let first = decided_once(&runtime, Counted::new("a", "a", "a"), "the first command").await;
    let other = Counted::new("b", "b", "b");
    let other_decided = other.decided.clone();
    let other = decided_once(&runtime, other, "the command on another boundary").await;
    assert!(
        !first.is_finished(),
        "the first append is out until the lock is released"
    );

    blocker.batch_execute("COMMIT").await.expect("unlock");
    let first = first.await.expect("task").expect("first commits");
    let other = other.await.expect("task").expect("other commits");
    assert_eq!((first.attempts, other.attempts), (1, 1));
    assert_eq!(*other_decided.borrow(), vec![0]);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reading_what_an_append_out_writes_waits_for_its_answer() {
    let (_db, runtime, blocker) = blocked_appends().await;
    let first = decided_once(&runtime, Counted::new("a", "a", "a"), "the first command").await;
    // On another key, but reading what the first one writes.
    let reader = Counted::new("a", "c", "c");
    let reader_decided = reader.decided.clone();
    let polled = poll_each_once([runtime.execute(reader)]).await;
    assert!(polled[0].1.is_none(), "not answered while appends wait");

    // The reader is in the actor's mailbox before the first append can be answered.
    blocker.batch_execute("COMMIT").await.expect("unlock");
    let first = first.await.expect("task").expect("first commits");
    let reader = finish(polled)
        .await
        .pop()
        .expect("one")
        .expect("reader commits");
    assert_eq!(
        *reader_decided.borrow(),
        vec![1],
        "the reader decided once, counting the first command's ping, not before it was stored"
    );
    assert_eq!(reader.attempts, 1, "no conflict");
    assert!(reader.positions[0] > first.positions[0]);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_out_when_its_actor_stops_is_answered_and_not_decided_again() {
    let (_db, runtime, blocker) = blocked_appends().await;
    let first = Counted::new("a", "a", "a");
    let first_decided = first.decided.clone();
    let first_run = decided_once(&runtime, first, "the first command").await;

    // Decided while the first append is out, by the same actor, which it stops.
    let panicked = runtime.execute(Panics).await;
    assert!(
        matches!(panicked, Err(ExecuteError::Panicked(_))),
        "{panicked:?}"
    );

    blocker.batch_execute("COMMIT").await.expect("unlock");
    let first = first_run
        .await
        .expect("task")
        .expect("the append out commits, and its caller learns it");
    assert_eq!(first.attempts, 1);
    assert_eq!(*first_decided.borrow(), vec![0], "decided once");
    let stored = runtime
        .store()
        .read(&Pings("a".to_owned()).query(), ReadOptions::default())
        .await
        .expect("read");
    assert_eq!(
        stored.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        first.positions,
        "stored once, where the answer says"
    );
    runtime.shutdown().await;
}
