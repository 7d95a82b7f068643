//! A handler failing on one event: retried, then the subscription stops with the typed error,
//! its checkpoint just before that event and nothing at or after it applied; run again after a
//! fix it resumes exactly there. Skipping the event is an explicit act that names it.

#[path = "support/read_model.rs"]
mod read_model;

use std::time::Duration;

use dcb_runtime::subscription::{
    HandlerError, Subscription, SubscriptionError, SubscriptionState, TransactionalHandler,
    skip_failed_event,
};
use dcb_runtime::tokio_postgres::Transaction;
use dcb_runtime::{Event, EventStore, Position, Query, SequencedEvent};
use dcb_scenarios::ledger::{Ledger, MISMATCH_SQL};
use read_model::{LedgerDb, count, ledger_db};
use serde_json::json;

/// The ledger, failing (or panicking) on every event of type `Poison` while `broken`.
struct Fragile {
    broken: bool,
    panics: bool,
    tries: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl TransactionalHandler for Fragile {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        // Write first: a failure must roll this back with the checkpoint.
        Ledger.handle(tx, events).await?;
        if self.broken && events.iter().any(|e| e.event.event_type() == "Poison") {
            self.tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.panics {
                panic!("poison");
            }
            return Err("cannot handle poison".into());
        }
        Ok(())
    }
}

fn event(kind: &str, i: usize) -> Event {
    Event::new(kind, json!({ "i": i })).tagged("n", i.to_string())
}

/// 10 good events, the poison at 11, 5 good ones after it.
async fn history(store: &impl EventStore) {
    let mut events: Vec<_> = (1..=10).map(|i| event("Good", i)).collect();
    events.push(event("Poison", 11));
    events.extend((12..=16).map(|i| event("Good", i)));
    // Separate appends: the poison sits inside a batch of the subscription, not at its edge.
    for e in events {
        store.append(vec![e]).await.expect("append");
    }
}

fn fragile(panics: bool) -> (Fragile, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let tries = std::sync::Arc::default();
    (
        Fragile {
            broken: true,
            panics,
            tries: std::sync::Arc::clone(&tries),
        },
        tries,
    )
}

fn settings() -> Subscription {
    Subscription::new("ledger", Query::all())
        .batch_size(100)
        .retry(3, Duration::from_millis(1), Duration::from_millis(5))
}

async fn stops_before_the_poison_and_resumes_there(panics: bool) {
    let LedgerDb {
        db: _db,
        store,
        client,
    } = ledger_db().await;
    history(&store).await;

    let (handler, tries) = fragile(panics);
    let handle = settings()
        .run_transactional(&store, handler)
        .await
        .expect("subscription");
    let error = handle.stopped().await;
    let SubscriptionError::HandlerFailed {
        event,
        checkpoint,
        attempts,
        ref error,
        ..
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(
        (event, checkpoint, attempts),
        (Position::new(11), Position::new(10), 3)
    );
    let expected = if panics {
        "panicked: poison"
    } else {
        "cannot handle poison"
    };
    assert!(error.contains(expected), "{error}");
    // The batch of 16 failed once, then the poison alone three times.
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(matches!(
        handle.progress().state,
        SubscriptionState::Stopped(_)
    ));
    // Everything before it applied once, nothing at or after it.
    assert_eq!(
        count(&client, "SELECT count(*) FROM projected_events").await,
        10
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM projected_events WHERE position >= 11 OR applied <> 1"
        )
        .await,
        0
    );
    let row = client
        .query_one(
            "SELECT position, failed_position, failed_error FROM dcb_subscriptions",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(11));
    assert!(
        row.get::<_, Option<String>>(2)
            .is_some_and(|e| e.contains(expected))
    );
    handle.shutdown().await;

    // Fixed: resumes at 11, and the read model ends exact.
    let fixed = settings()
        .run_transactional(&store, Ledger)
        .await
        .expect("again");
    fixed
        .caught_up_to(Position::new(16))
        .await
        .expect("caught up");
    assert_eq!(count(&client, MISMATCH_SQL).await, 0);
    let failed: Option<i64> = client
        .query_one("SELECT failed_position FROM dcb_subscriptions", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(
        failed, None,
        "the failure is cleared once the event is handled"
    );
    fixed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_stops_before_its_event_and_a_fixed_one_resumes_there() {
    stops_before_the_poison_and_resumes_there(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_stops_the_same_way() {
    stops_before_the_poison_and_resumes_there(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_skipped_only_by_naming_it() {
    let LedgerDb {
        db: _db,
        store,
        client,
    } = ledger_db().await;
    history(&store).await;
    let (handler, _) = fragile(false);
    let handle = settings()
        .run_transactional(&store, handler)
        .await
        .expect("subscription");
    handle.stopped().await;
    handle.shutdown().await;

    for wrong in [10, 12] {
        let skipped = skip_failed_event(&store, "ledger", Position::new(wrong))
            .await
            .expect("skip");
        assert!(
            !skipped,
            "skipping {wrong}, not the failed event, is refused"
        );
    }
    assert!(
        !skip_failed_event(&store, "other", Position::new(11))
            .await
            .expect("skip")
    );
    assert!(
        skip_failed_event(&store, "ledger", Position::new(11))
            .await
            .expect("skip")
    );

    let (handler, tries) = fragile(false);
    let again = settings()
        .run_transactional(&store, handler)
        .await
        .expect("again");
    again
        .caught_up_to(Position::new(16))
        .await
        .expect("caught up");
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Exactly the skipped event is missing from the read model.
    assert_eq!(count(&client, MISMATCH_SQL).await, 1);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM events e WHERE NOT EXISTS \
               (SELECT 1 FROM projected_events p WHERE p.id = e.id) AND e.position = 11"
        )
        .await,
        1
    );
    let skipped: Vec<i64> = client
        .query_one("SELECT skipped FROM dcb_subscriptions", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(skipped, vec![11]);
    again.shutdown().await;
}

/// Two consumers of one name (each with a store of its own, as in two processes): when the active
/// one stops on a poison event, the standby taking over stops on it too, without trying it again.
/// A run started after the failure (after a fix) does try it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_a_poison_event_stops_the_subscription_not_only_one_consumer() {
    let LedgerDb { db, store, client } = ledger_db().await;
    // A store of its own each, as in two processes.
    let stores = [store, db.store().await.expect("second store")];
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut handles = Vec::new();
    for store in &stores {
        let handler = Fragile {
            broken: true,
            panics: false,
            tries: tries.clone(),
        };
        handles.push(
            settings()
                .takeover_interval(Duration::from_millis(10))
                .run_transactional(store, handler)
                .await
                .expect("subscription"),
        );
    }
    // Both run before the poison exists.
    history(&stores[0]).await;
    let mut attempts = Vec::new();
    for handle in &handles {
        match handle.stopped().await {
            SubscriptionError::HandlerFailed {
                event,
                checkpoint,
                attempts: n,
                ..
            } => {
                assert_eq!((event, checkpoint), (Position::new(11), Position::new(10)));
                attempts.push(n);
            }
            other => panic!("{other:?}"),
        }
    }
    attempts.sort_unstable();
    assert_eq!(
        attempts,
        vec![0, 3],
        "one tried, the other stopped on taking over"
    );
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 4);
    for handle in handles {
        handle.shutdown().await;
    }
    // A new run after a fix resumes at the event.
    let fixed = settings()
        .run_transactional(&stores[1], Ledger)
        .await
        .expect("again");
    fixed
        .caught_up_to(Position::new(16))
        .await
        .expect("caught up");
    assert_eq!(count(&client, MISMATCH_SQL).await, 0);
    fixed.shutdown().await;
}
