//! Deciding without a read, on PostgreSQL and on `MemoryStore`: after an actor's own append on a
//! boundary it had decided on warm state, that state plus the appended events is the store, so
//! the next command on the boundary is decided without reading. A writer outside the actor makes
//! that state stale: an append decided on it fails its condition and is decided again after a
//! read (costing no attempt), and a refusal decided on it is never answered without a read.
//! Which reads ran, with which `after`, is recorded by the store (`Recording`).

#[path = "support/peeks.rs"]
mod peeks;
#[path = "support/recording.rs"]
mod recording;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Committed, EventStore, Position, Runtime, RuntimeBuilder};
use dcb_scenarios::transfer::{self, Transfer};
use peeks::peek;
use recording::Recording;

on_both_stores!(
    |check, store, db| {
        check(Recording::new(store), db).await;
    };
    a_boundary_this_actor_appended_last_is_decided_without_a_read,
);

async fn transfer<S: EventStore + 'static>(
    runtime: &Runtime<S>,
    from: &str,
    to: &str,
    amount: i64,
) -> Committed {
    match runtime.execute(Transfer::new(from, to, amount)).await {
        Ok(committed) => committed,
        other => panic!("transfer {from} -> {to} {amount}: {other:?}"),
    }
}

async fn a_boundary_this_actor_appended_last_is_decided_without_a_read<S: EventStore + 'static>(
    store: Recording<S>,
    _db: Option<&TestDatabase>,
) {
    store
        .append(vec![
            transfer::account_opened("x", 100),
            transfer::account_opened("y", 100),
        ])
        .await
        .expect("open"); // 1..=2
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let store = runtime.store();
    let p = |n| Some(Position::new(n));

    // Cold: read from the start (3). Warm but read since: read after 2 (4). Then the state is
    // this actor's own last append: no read for the next three (5, 6, 7).
    for _ in 0..5 {
        assert_eq!(transfer(&runtime, "x", "y", 10).await.attempts, 1);
    }
    assert_eq!(store.take_reads(), vec![None, p(2)]);

    // Another writer: x holds 150 now, its warm state says 50. Refused on that state, the
    // transfer is decided again after a read, and commits (9).
    store
        .append(vec![transfer::money_transferred("y", "x", 100)])
        .await
        .expect("8: y -> x 100");
    let after_read = transfer(&runtime, "x", "y", 120).await;
    assert_eq!(after_read.positions, [Position::new(9)]);
    assert_eq!(
        after_read.attempts, 1,
        "a refusal without a read is no conflict"
    );
    assert_eq!(store.take_reads(), vec![p(7)]);

    // Another writer again, after this actor's last append: the transfer decided on the stale
    // state fails its condition, then reads and commits (11) on its second append.
    store
        .append(vec![transfer::money_transferred("y", "x", 5)])
        .await
        .expect("10: y -> x 5");
    let after_conflict = transfer(&runtime, "x", "y", 1).await;
    assert_eq!(after_conflict.positions, [Position::new(11)]);
    assert_eq!(after_conflict.attempts, 2);
    assert_eq!(store.take_reads(), vec![p(9)]);

    // 100 - 5 x 10 + 100 - 120 + 5 - 1, and 100 + 5 x 10 - 100 + 120 - 5 + 1; the peek refuses
    // (it appends nothing), so it reads first.
    assert_eq!(peek(&runtime, "x", "y").await, (Some(34), Some(166)));
    assert_eq!(store.take_reads(), vec![p(11)]);
    runtime.shutdown().await;
}
