//! A transactional subscription is exact: following 8 concurrent writers through the runtime
//! (chains and group commit on), its read model ends equal to a fold over `events`, every event
//! applied once (counted per event id); two consumers of one name in one process take turns,
//! never both active.

#[path = "support/read_model.rs"]
mod read_model;

use std::time::Duration;

use dcb_runtime::SequencedEvent;
use dcb_runtime::subscription::{
    HandlerError, Start, Subscription, SubscriptionState, TransactionalHandler,
};
use dcb_runtime::tokio_postgres::Transaction;
use dcb_runtime::{Position, Query, Runtime};
use dcb_scenarios::disjoint::Create;
use dcb_scenarios::invoice::NextInvoice;
use dcb_scenarios::ledger::{Ledger, MISMATCH_SQL, StrictLedger};
use read_model::{LedgerDb, count, ledger_db};
use tokio::sync::watch;

/// Granted subscription locks (key space 0x44434253) in this database.
const HOLDERS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND classid = 1145258579 AND database = (SELECT oid FROM pg_database \
     WHERE datname = current_database())";

async fn head(client: &tokio_postgres::Client) -> Position {
    Position::new(
        client
            .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
            .await
            .expect("head")
            .get(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactional_projection_following_eight_writers_applies_every_event_once() {
    let LedgerDb {
        db: _db,
        store,
        client,
    } = ledger_db().await;
    // Small batches: many checkpoints while the writers run.
    let subscription = Subscription::new("ledger", Query::all())
        .batch_size(37)
        .run_transactional(&store, Ledger)
        .await
        .expect("subscription");
    subscription.active().await.expect("active");

    let runtime = Runtime::builder(store.clone())
        .start()
        .await
        .expect("runtime");
    const WRITERS: usize = 8;
    const COMMANDS: usize = 150;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for i in 0..COMMANDS {
                    // A hot boundary (chains on one actor) and distinct ones (group commit).
                    if i % 2 == 0 {
                        runtime.execute(NextInvoice).await.expect("invoice");
                    } else {
                        runtime
                            .execute(Create::new(format!("{w}-{i}")))
                            .await
                            .expect("thing");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    runtime.shutdown().await;

    let head = head(&client).await;
    assert_eq!(head.get(), (WRITERS * COMMANDS) as i64);
    subscription.caught_up_to(head).await.expect("caught up");
    assert_eq!(count(&client, MISMATCH_SQL).await, 0);
    assert_eq!(
        count(&client, "SELECT count(*) FROM projected_events").await,
        head.get()
    );
    let stored: i64 = client
        .query_one(
            "SELECT position FROM dcb_subscriptions WHERE name = 'ledger'",
            &[],
        )
        .await
        .expect("checkpoint")
        .get(0);
    assert_eq!(stored, head.get());
    subscription.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_one_name_take_turns_and_stay_exact() {
    let LedgerDb { db, store, client } = ledger_db().await;
    let runtime = Runtime::builder(store.clone())
        .start()
        .await
        .expect("runtime");
    for _ in 0..100 {
        runtime.execute(NextInvoice).await.expect("invoice");
    }
    let settings = Subscription::new("ledger", Query::all())
        .batch_size(10)
        .takeover_interval(Duration::from_millis(20))
        .start(Start::Beginning);
    let first = settings
        .clone()
        .run_transactional(&store, Ledger)
        .await
        .expect("first");
    first.active().await.expect("first active");
    // The second has a store of its own: its own pool and sessions, as another process would.
    let other_store = db.store().await.expect("second store");
    let second = settings
        .run_transactional(&other_store, Ledger)
        .await
        .expect("second");
    first
        .caught_up_to(Position::new(100))
        .await
        .expect("first caught up");
    assert_eq!(first.progress().state, SubscriptionState::Active);
    assert_eq!(second.progress().state, SubscriptionState::Standby);

    first.shutdown().await;
    for _ in 0..100 {
        runtime.execute(NextInvoice).await.expect("invoice");
    }
    second.active().await.expect("second takes over");
    second
        .caught_up_to(Position::new(200))
        .await
        .expect("second caught up");
    assert_eq!(count(&client, MISMATCH_SQL).await, 0);
    assert_eq!(
        count(&client, "SELECT count(*) FROM projected_events").await,
        200
    );
    second.shutdown().await;
    runtime.shutdown().await;
}

/// The ledger, holding its transaction open after writing until the test opens the gate.
struct Held {
    open: watch::Receiver<bool>,
    arrived: watch::Sender<usize>,
}

impl TransactionalHandler for Held {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        Ledger.handle(tx, events).await?;
        self.arrived.send_modify(|n| *n += 1);
        let _ = self.open.wait_for(|open| *open).await;
        Ok(())
    }
}

/// A consumer whose lock session dies while its handler holds a batch open keeps believing it is
/// active; a second takes over and handles the same batch. The checkpoint's compare-and-set lets
/// exactly one of them commit it, and the other goes on from there instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_believing_they_are_active_apply_each_event_once() {
    let LedgerDb { db, store, client } = ledger_db().await;
    let runtime = Runtime::builder(store.clone())
        .start()
        .await
        .expect("runtime");
    for _ in 0..20 {
        runtime.execute(NextInvoice).await.expect("invoice");
    }
    let settings = Subscription::new("ledger", Query::all())
        .batch_size(100)
        .takeover_interval(Duration::from_millis(20));
    let (open, gate) = watch::channel(false);
    let arrived = watch::Sender::new(0);
    let held = settings
        .clone()
        .run_transactional(
            &store,
            Held {
                open: gate,
                arrived: arrived.clone(),
            },
        )
        .await
        .expect("first");
    arrived
        .subscribe()
        .wait_for(|n| *n >= 1)
        .await
        .expect("the first consumer holds a batch");

    // Its lock session ends under it; its batch's transaction stays open.
    let ended: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM ({}) h) t",
                HOLDERS.replace("SELECT count(*) FROM", "SELECT pid FROM")
            ),
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(ended, 1);
    let other_store = db.store().await.expect("second store");
    let second = settings
        .run_transactional(&other_store, StrictLedger)
        .await
        .expect("second");
    second.active().await.expect("the second takes over");
    // The second's insert waits for the first's uncommitted rows.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while count(
        &client,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    )
    .await
        < 1
    {
        assert!(std::time::Instant::now() < until, "the second never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    open.send_replace(true);

    second
        .caught_up_to(Position::new(20))
        .await
        .expect("the second goes on from the first's checkpoint");
    for _ in 0..10 {
        runtime.execute(NextInvoice).await.expect("invoice");
    }
    second
        .caught_up_to(Position::new(30))
        .await
        .expect("and follows");
    assert_eq!(count(&client, MISMATCH_SQL).await, 0);
    assert_eq!(
        count(&client, "SELECT count(*) FROM projected_events").await,
        30
    );
    assert_eq!(second.progress().state, SubscriptionState::Active);
    held.watch()
        .wait_for(|p| p.state == SubscriptionState::Standby)
        .await
        .expect("the first stands by");
    held.shutdown().await;
    second.shutdown().await;
    runtime.shutdown().await;
}
