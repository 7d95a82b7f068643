//! Append-condition semantics against the real PostgreSQL store.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Event, EventStore, P, Position, PostgresStore, Query, QueryItem,
    ReadOptions,
};
use serde_json::json;

async fn store() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    (db, store)
}

fn ev(t: &str, tags: &[(&str, &str)]) -> Event {
    tags.iter()
        .fold(Event::new(t, json!({"t": t})), |e, (k, v)| e.tagged(*k, *v))
}

fn cond(query: impl Into<Query>, after: Option<i64>) -> AppendCondition {
    AppendCondition::new(query.into(), after.map(Position::new))
}

#[tokio::test]
async fn after_is_exclusive() {
    let (_db, s) = store().await;
    let a = s.append(vec![ev("A", &[("k", "1")])]).await.unwrap();
    assert_eq!(a.first, Position::new(1));
    let q = QueryItem::with_tags([P("k", "1")]);
    // The matching event is at position 1: "after 1" excludes it, "after 0" includes it.
    s.append_if(vec![ev("B", &[])], cond(q.clone(), Some(1)))
        .await
        .expect("nothing matching after position 1");
    let err = s
        .append_if(vec![ev("B", &[])], cond(q, Some(0)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::ConditionFailed { after: Some(p) } if p == Position::new(0))
    );
}

#[tokio::test]
async fn without_after_any_matching_event_fails_the_append() {
    let (_db, s) = store().await;
    let q = QueryItem::of_types(["A"]);
    s.append_if(vec![ev("A", &[])], cond(q.clone(), None))
        .await
        .expect("empty boundary");
    let err = s
        .append_if(vec![ev("A", &[])], cond(q, None))
        .await
        .unwrap_err();
    assert!(err.is_condition_failed());
    let read = s.read(&Query::all(), ReadOptions::default()).await.unwrap();
    assert_eq!(read.events.len(), 1);
}

#[tokio::test]
async fn a_match_on_any_one_item_fails_the_whole_condition() {
    let (_db, s) = store().await;
    let items = [
        QueryItem::of_types(["TypeOnly"]),
        QueryItem::with_tags([P("tag", "only")]),
        QueryItem::new(["Mixed"], [P("m", "1"), P("n", "2")]),
    ];
    let query = Query::from_items(items.clone());
    // Events that each match exactly one item, plus near misses that match none.
    let matching = [
        ev("TypeOnly", &[]),
        ev("Other", &[("tag", "only")]),
        ev("Mixed", &[("n", "2"), ("m", "1"), ("x", "y")]),
    ];
    let near_misses = [
        ev("Other", &[("tag", "other")]),
        ev("Mixed", &[("m", "1")]),
        ev("Other", &[("m", "1"), ("n", "2")]),
    ];
    for (i, event) in matching.into_iter().enumerate() {
        let head = s.read(&query, ReadOptions::default()).await.unwrap().head;
        for miss in &near_misses {
            s.append(vec![miss.clone().with_id(uuid::Uuid::now_v7())])
                .await
                .unwrap();
        }
        s.append_if(
            vec![ev("Probe", &[])],
            AppendCondition::new(query.clone(), s_head(&s).await),
        )
        .await
        .unwrap_or_else(|e| panic!("near misses must not conflict (item {i}): {e}"));
        s.append(vec![event]).await.unwrap();
        let err = s
            .append_if(
                vec![ev("Probe", &[])],
                AppendCondition::new(query.clone(), head),
            )
            .await
            .unwrap_err();
        assert!(
            err.is_condition_failed(),
            "item {i} must fail the condition"
        );
        assert!(
            items[i].matches(
                &s.read(&Query::all(), ReadOptions::default().backwards().limit(1))
                    .await
                    .unwrap()
                    .events[0]
                    .event
            )
        );
    }
}

async fn s_head(s: &PostgresStore) -> Option<Position> {
    s.read(&Query::all(), ReadOptions::default().limit(0))
        .await
        .unwrap()
        .head
}

#[tokio::test]
async fn query_all_conflicts_with_any_event() {
    let (_db, s) = store().await;
    s.append_if(vec![ev("A", &[])], cond(Query::all(), None))
        .await
        .unwrap();
    let err = s
        .append_if(vec![ev("B", &[])], cond(Query::all(), None))
        .await
        .unwrap_err();
    assert!(err.is_condition_failed());
    s.append_if(vec![ev("B", &[])], cond(Query::all(), Some(1)))
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_return_matches_in_order_with_the_head() {
    let (_db, s) = store().await;
    for i in 0..10 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        s.append(vec![ev("N", &[("parity", tag)])]).await.unwrap();
    }
    let q = Query::from(QueryItem::with_tags([P("parity", "even")]));
    let r = s.read(&q, ReadOptions::default()).await.unwrap();
    let positions: Vec<i64> = r.events.iter().map(|e| e.position.get()).collect();
    assert_eq!(positions, [1, 3, 5, 7, 9]);
    assert_eq!(r.head, Some(Position::new(10)));
    let r = s
        .read(&q, ReadOptions::default().after(Position::new(3)).limit(2))
        .await
        .unwrap();
    let positions: Vec<i64> = r.events.iter().map(|e| e.position.get()).collect();
    assert_eq!(positions, [5, 7]);
    let r = s
        .read(&q, ReadOptions::default().backwards().limit(2))
        .await
        .unwrap();
    let positions: Vec<i64> = r.events.iter().map(|e| e.position.get()).collect();
    assert_eq!(positions, [9, 7]);
}

#[tokio::test]
async fn an_event_matching_several_items_is_read_once() {
    let (_db, s) = store().await;
    s.append(vec![ev("T", &[("account", "a0"), ("account", "a1")])])
        .await
        .unwrap();
    s.append(vec![ev("T", &[("account", "a1")])]).await.unwrap();
    let both = Query::from(QueryItem::new(["T"], [P("account", "a0")]))
        .or(QueryItem::new(["T"], [P("account", "a1")]));
    for options in [
        ReadOptions::default(),
        ReadOptions::default().limit(1),
        ReadOptions::default().backwards(),
    ] {
        let read = s.read(&both, options).await.unwrap();
        let mut positions: Vec<i64> = read.events.iter().map(|e| e.position.get()).collect();
        positions.sort_unstable();
        let expected: &[i64] = if options.max_events() == Some(1) {
            &[1]
        } else {
            &[1, 2]
        };
        assert_eq!(positions, expected, "{options:?}");
    }
}
