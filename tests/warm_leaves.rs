//! Warm leaves, on PostgreSQL and on `MemoryStore` (a regression of a fix in
//! `src/runtime/command_actor.rs`): leaves are cached one by one, each with the position it has
//! seen, so a tuple joined from leaves seen at different positions folds each only after its own;
//! a chain reads after the oldest head its leaves have seen, and from the start when one of them
//! was never read. Which `after` each read had is recorded by the store (`Recording`).
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
#[path = "support/peeks.rs"]
mod peeks;
#[path = "support/recording.rs"]
mod recording;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use bins::Put;
use chain::{Submitted, as_one_chain};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, Position, RuntimeBuilder};
use dcb_scenarios::transfer;
use gate::Gate;
use peeks::{Balances, peek};
use recording::Recording;

// Each check on a fresh PostgreSQL database and on a fresh `MemoryStore`, the store wrapped in
// `Recording`; on PostgreSQL the check also gets the database, for SQL checks.
on_both_stores!(
    |check, store, db| {
        check(Recording::new(store), db).await;
    };
    leaves_seen_at_different_positions_each_fold_only_what_they_have_not_seen,
);

async fn leaves_seen_at_different_positions_each_fold_only_what_they_have_not_seen<
    S: EventStore + 'static,
>(
    store: Recording<S>,
    _db: Option<&TestDatabase>,
) {
    store
        .append(vec![
            transfer::account_opened("x", 100),
            transfer::account_opened("y", 100),
            transfer::account_opened("z", 100),
        ])
        .await
        .expect("open"); // 1..=3
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let store = runtime.store();

    // x and z warm at 3.
    assert_eq!(peek(&runtime, "x", "z").await, (Some(100), Some(100)));
    store
        .append(vec![transfer::money_transferred("x", "y", 10)])
        .await
        .expect("4: x -> y 10");
    // y (cold) and z warm at 4.
    assert_eq!(peek(&runtime, "y", "z").await, (Some(110), Some(100)));
    store
        .append(vec![transfer::money_transferred("y", "x", 5)])
        .await
        .expect("5: y -> x 5");
    // x seen at 3 must fold 4 and 5; y seen at 4 only 5 (folding 4 again: 115; reading after
    // 4 for both: x misses 4, 105).
    assert_eq!(peek(&runtime, "x", "y").await, (Some(95), Some(105)));
    // z seen at 4, x at 5: nothing new for either.
    assert_eq!(peek(&runtime, "z", "x").await, (Some(100), Some(95)));
    // A chain reads after the oldest head its leaves have seen; a leaf never read, from the start.
    let p = |n| Some(Position::new(n));
    assert_eq!(store.take_reads(), vec![None, None, p(3), p(4)]);

    // One chain reading from the start (w was never read) while the warm leaves (x, y, z, all
    // seen at 5) fold only what came after 5; each tuple in its own order.
    store
        .append(vec![transfer::money_transferred("z", "y", 7)])
        .await
        .expect("6: z -> y 7");
    store
        .append(vec![transfer::account_opened("w", 50)])
        .await
        .expect("7: open w");
    let queued: Vec<Submitted<Balances>> = [("y", "z"), ("z", "y"), ("x", "w"), ("w", "y")]
        .into_iter()
        .map(|(a, b)| {
            let runtime = runtime.clone();
            Box::pin(async move { peek(&runtime, a, b).await }) as Submitted<Balances>
        })
        .collect();
    let gate = Gate::closed();
    let holder = Put {
        gate: Some(gate.clone()),
        ..Put::new("hold", "h", 1)
    };
    let balances = as_one_chain(&runtime, &gate, holder, queued).await;
    assert_eq!(
        balances,
        vec![
            (Some(112), Some(93)),
            (Some(93), Some(112)),
            (Some(95), Some(50)),
            (Some(50), Some(112)),
        ]
    );
    // The holder's read, then the chain's: both from the start (a cold leaf each).
    assert_eq!(store.take_reads(), vec![None, None]);
    runtime.shutdown().await;
}
