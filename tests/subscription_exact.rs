//! A transactional subscription is exact: following 8 concurrent writers through the runtime
//! (chains and group commit on), its read model ends equal to a fold over `events`, every event
//! applied once (counted per event id); two consumers of one name in one process take turns,
//! never both active.

use std::time::Duration;

use dcb_runtime::subscription::{Start, Subscription, SubscriptionState};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Position, Query, Runtime};
use dcb_scenarios::disjoint::Create;
use dcb_scenarios::invoice::NextInvoice;
use dcb_scenarios::ledger::{Ledger, MISMATCH_SQL, SCHEMA_SQL};

async fn head(client: &tokio_postgres::Client) -> Position {
    Position::new(
        client
            .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
            .await
            .expect("head")
            .get(0),
    )
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactional_projection_following_eight_writers_applies_every_event_once() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let client = db.client().await.expect("client");
    client.batch_execute(SCHEMA_SQL).await.expect("schema");
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
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let client = db.client().await.expect("client");
    client.batch_execute(SCHEMA_SQL).await.expect("schema");
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
