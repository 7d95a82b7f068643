//! A process that never conflicted with another on a key still learns, from its own appends,
//! that another process takes turns on it, and takes turns there too (V7): otherwise the first
//! process to run a hot boundary can keep winning it, decided on warm state chain after chain,
//! while the others take turns among themselves and fail against it. Another process's turn is a
//! session advisory lock on the key (V6), held here by a session of the test.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/pings.rs"]
mod pings;

use std::time::Duration;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Projection, Runtime, default_keys};
use pings::{Ping, Pings};

/// The turn lock of a consistency key: V6's key space, the key folded to 32 bits
/// (`runtime/leases.rs`).
fn turn_lock(key: u64) -> u32 {
    #[allow(clippy::cast_possible_truncation)]
    let folded = (key ^ (key >> 32)) as u32;
    folded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_without_turns_that_meets_another_process_turn_makes_the_next_chain_take_turns() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let runtime = Runtime::builder(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    // Cold, then warm: the next ping is decided on current warm state, without a read.
    for n in 1..=2 {
        let c = runtime.execute(Ping::new("a")).await.expect("warm-up");
        assert_eq!(c.events[0].payload()["n"], n);
    }

    let lock = turn_lock(default_keys(&Pings("a".to_owned()).query())[0]);
    let other_process = db.client().await.expect("client");
    other_process
        .execute(
            "SELECT pg_advisory_lock(1145258580, $1::int8::bit(32)::int4)",
            &[&i64::from(lock)],
        )
        .await
        .expect("another process's turn");

    // No conflict, so no turn: it commits, and sees the turn held.
    let third = runtime.execute(Ping::new("a")).await.expect("third");
    assert_eq!(third.attempts, 1);

    // The next chain takes its turn first: it waits for the other process's.
    let mut fourth = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(Ping::new("a")).await }
    });
    let waiting = async {
        loop {
            let row = other_process
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND classid = 1145258580 AND objid::int8 = $1 AND NOT granted",
                    &[&i64::from(lock)],
                )
                .await
                .expect("pg_locks");
            if row.get::<_, i64>(0) > 0 {
                break;
            }
            // Polling the server's lock table, not timing the runtime.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        done = &mut fourth => panic!("decided without waiting for the other process's turn: {done:?}"),
        waited = tokio::time::timeout(Duration::from_secs(20), waiting) => {
            waited.expect("the next chain waits for the turn");
        }
    }
    assert!(!fourth.is_finished());

    other_process
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await
        .expect("turn given back");
    let fourth = fourth.await.expect("task").expect("fourth commits");
    assert_eq!(fourth.attempts, 1);
    assert_eq!(fourth.events[0].payload()["n"], 4);
    runtime.shutdown().await;
}
