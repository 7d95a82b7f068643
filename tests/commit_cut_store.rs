//! A connection lost while the server commits an append, on the real database, through a proxy
//! that drops the connection after the server committed and before the client hears of it
//! (`tests/support/cut_proxy.rs`): the store answers a transient error; the events are stored,
//! once; re-sending the same append (same events, same condition) over a new connection answers
//! their original positions as a replay, not a failed condition. Controls: the same cut on a
//! read, and on an append its condition refused, stores nothing.

#[path = "support/cut_proxy.rs"]
mod cut_proxy;
#[path = "support/event_rows.rs"]
mod event_rows;

use cut_proxy::proxied;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, EventStore, P, Position, Query, QueryItem, ReadOptions,
    StoreError,
};
use event_rows::{assert_not_stored, assert_stored_once, order_event, rows};
use serde_json::json;

/// A transient store error reporting a lost connection.
#[track_caller]
fn assert_connection_lost(e: &StoreError) {
    assert!(e.is_transient(), "a lost connection is transient: {e:?}");
    assert_eq!(e.reason(), "connection_lost", "{e:?}");
}

fn order_boundary(order: &str) -> Query {
    QueryItem::with_tags([P("order", order)]).into()
}

#[tokio::test]
async fn an_append_cut_after_commit_is_stored_once_and_replays_when_resent() {
    let (db, proxy, store) = proxied().await;

    // Warm-up: the one connection prepares dcb_append's statement now, so that after arming the
    // append is a single round trip whose ReadyForQuery follows the commit.
    let warm = order_event("OrderOpened", "o1", json!({"by": "warm-up"}));
    let warmed = store.append(vec![warm.clone()]).await.expect("warm-up");
    assert_eq!(
        (warmed.first, warmed.last, warmed.replayed),
        (Position::new(1), Position::new(1), false)
    );
    let head = store
        .read(&Query::all(), ReadOptions::default().limit(0))
        .await
        .expect("head")
        .head;
    assert_eq!(head, Some(Position::new(1)));

    // The conditional append, cut after its commit. Cloned before sending: the re-send must be
    // the very same events.
    let events = vec![
        order_event("ItemAdded", "o1", json!({"sku": "A-1", "qty": 2})),
        order_event(
            "OrderPlaced",
            "o1",
            json!({"total": 19.5, "note": "naïve 🦀"}),
        )
        .tagged("customer", "c7"),
    ];
    let condition = AppendCondition::new(order_boundary("o1"), head);
    proxy.arm();
    let cut = store.append_if(events.clone(), condition.clone()).await;
    match &cut {
        Err(AppendError::Store(e)) => assert_connection_lost(e),
        other => panic!("expected a transient store error, got {other:?}"),
    }
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    assert_eq!(cuts[0].connection, 1, "the pool's one connection was cut");
    assert!(
        cuts[0].swallowed.ends_with('C'),
        "dcb_append ran to its end (command complete) before the cut: {cuts:?}"
    );

    // It committed: stored once, right after the warm-up.
    let stored = rows(&db).await;
    assert_eq!(stored.len(), 3, "{stored:#?}");
    assert_stored_once(&stored, &warm, Position::new(1));
    assert_stored_once(&stored, &events[0], Position::new(2));
    assert_stored_once(&stored, &events[1], Position::new(3));

    // Re-sent unchanged, over a new connection the pool opens by itself: the original positions,
    // a replay. The condition would fail now (the boundary holds the events since position 1),
    // and must not be what answers.
    let resent = store.append_if(events.clone(), condition.clone()).await;
    assert_eq!(
        resent.expect("the re-send is a replay"),
        Appended {
            first: Position::new(2),
            last: Position::new(3),
            replayed: true,
            recorded_at: None,
        }
    );
    assert_eq!(proxy.accepted(), 2, "the pool replaced the cut connection");
    assert_eq!(rows(&db).await, stored, "the replay stored nothing");

    // Contrast: other events under the same condition are refused, the boundary did change.
    let fresh = vec![order_event(
        "ItemAdded",
        "o1",
        json!({"sku": "A-1", "qty": 2}),
    )];
    match store.append_if(fresh, condition).await {
        Err(AppendError::ConditionFailed { after }) => assert_eq!(after, head),
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(rows(&db).await, stored);
}

/// Control: the same cut on a read commits nothing; the store recovers.
#[tokio::test]
async fn a_read_cut_the_same_way_is_a_transient_error_and_stores_nothing() {
    let (db, proxy, store) = proxied().await;
    let seed = order_event("OrderOpened", "o2", json!({}));
    store.append(vec![seed.clone()]).await.expect("seed");
    let before = rows(&db).await;

    proxy.arm();
    match store
        .read(&order_boundary("o2"), ReadOptions::default())
        .await
    {
        Err(e) => assert_connection_lost(&e),
        Ok(read) => panic!("expected a transient error, the read answered {read:?}"),
    }
    assert_eq!(proxy.cuts().len(), 1);
    assert_eq!(rows(&db).await, before, "a cut read stores nothing");

    // The pool recovers: a new connection answers.
    let read = store
        .read(&order_boundary("o2"), ReadOptions::default())
        .await
        .expect("read after the cut");
    assert_eq!(read.events.len(), 1);
    assert_eq!(read.events[0].event, seed);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(rows(&db).await, before);
}

/// Control: an append its condition refused, cut the same way (its transaction commits, having
/// written nothing), is not stored, and re-sending it answers `ConditionFailed`, not a replay.
#[tokio::test]
async fn a_refused_append_cut_the_same_way_is_not_stored_and_a_resend_is_refused() {
    let (db, proxy, store) = proxied().await;
    store
        .append(vec![order_event("OrderOpened", "o3", json!({}))])
        .await
        .expect("seed (also prepares dcb_append)");
    let before = rows(&db).await;

    let events = vec![order_event("OrderPlaced", "o3", json!({"total": 1}))];
    // Stale: the boundary holds the seed after "the beginning".
    let stale = AppendCondition::new(order_boundary("o3"), None);
    proxy.arm();
    match store.append_if(events.clone(), stale.clone()).await {
        Err(AppendError::Store(e)) => assert_connection_lost(&e),
        other => panic!("expected a transient store error, got {other:?}"),
    }
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1);
    assert!(cuts[0].swallowed.ends_with('C'), "{cuts:?}");
    let after = rows(&db).await;
    assert_eq!(after, before, "nothing of the refused append is stored");
    assert_not_stored(&after, &events[0]);

    match store.append_if(events, stale).await {
        Err(AppendError::ConditionFailed { after: None }) => {}
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(rows(&db).await, before);
}
