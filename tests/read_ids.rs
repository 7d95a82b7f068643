//! `read_ids` answers the same on `MemoryStore` and `PostgresStore`: each id asked for that is
//! stored, once, in position order, whatever the order of the request, its repeats and its
//! unknown ids.

#[path = "support/event_rows.rs"]
mod event_rows;
#[path = "support/stores.rs"]
mod stores;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore, MemoryStore, Position};
use event_rows::order_event;
use serde_json::json;
use stores::strip;
use uuid::Uuid;

#[tokio::test]
async fn memory_and_postgres_agree_on_read_ids() {
    let db = TestDatabase::create().await.expect("test database");
    let postgres = db.store().await.expect("store");
    let memory = MemoryStore::new();

    let history: Vec<Vec<Event>> = vec![
        vec![order_event("A", "x", json!(1))],
        vec![
            order_event("B", "x", json!({"b": [1, 2]})),
            Event::new("C", json!(null)),
            order_event("D", "y", json!("d")),
        ],
        vec![Event::new("E", json!({"e": "é"})).tagged("k", "v")],
        vec![
            order_event("F", "x", json!(6)),
            order_event("G", "z", json!(7)),
        ],
    ];
    for append in &history {
        let on_postgres = postgres.append(append.clone()).await.expect("append");
        let on_memory = memory.append(append.clone()).await.expect("append");
        // The same positions; each store says when it stored, by its own clock.
        let placed =
            |a: &dcb_runtime::Appended| (a.first, a.last, a.replayed, a.recorded_at.is_some());
        assert_eq!(placed(&on_postgres), placed(&on_memory));
    }
    let all: Vec<Event> = history.into_iter().flatten().collect();
    let id = |i: usize| all[i].id();
    let unknown = Uuid::now_v7;

    let requests: Vec<Vec<Uuid>> = vec![
        vec![],
        vec![unknown()],
        vec![id(3)],
        // Out of order, with unknown ids among them and one id twice.
        vec![id(6), unknown(), id(0), id(4), id(0), unknown(), id(2)],
        all.iter().rev().map(Event::id).collect(),
    ];
    for ids in requests {
        let on_postgres = postgres.read_ids(&ids).await.expect("read_ids");
        let on_memory = memory.read_ids(&ids).await.expect("read_ids");
        // Each id asked for that is stored, once, in position order.
        let mut expected: Vec<(Position, Event)> = all
            .iter()
            .enumerate()
            .filter(|(_, e)| ids.contains(&e.id()))
            .map(|(i, e)| (Position::new(i64::try_from(i).unwrap() + 1), e.clone()))
            .collect();
        expected.sort_by_key(|(p, _)| *p);
        assert_eq!(strip(&on_memory), expected, "memory, ids {ids:?}");
        assert_eq!(strip(&on_postgres), expected, "postgres, ids {ids:?}");
    }
}
