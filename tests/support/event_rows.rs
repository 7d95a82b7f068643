//! The `events` table as the tests that check what is stored read it: with SQL, on a direct
//! connection (not through a proxy), so that a row counts whatever the store under test answered;
//! and the events of an order these tests store.
#![allow(dead_code)] // each test binary uses part of it

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, Position};
use serde_json::Value;
use uuid::Uuid;

/// One stored row, read with SQL on a direct connection.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub position: i64,
    pub id: Uuid,
    pub event_type: String,
    pub tags: Vec<String>,
    pub payload: Value,
}

/// The rows of `events`, in position order, over a direct (unproxied) connection.
pub async fn rows(db: &TestDatabase) -> Vec<Row> {
    let client = db.client().await.expect("direct client");
    client
        .query(
            "SELECT position, id, type, tags, payload FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("select events")
        .iter()
        .map(|r| Row {
            position: r.get(0),
            id: r.get(1),
            event_type: r.get(2),
            tags: r.get(3),
            payload: r.get(4),
        })
        .collect()
}

/// The rows holding `event` (by id), and those holding its content (type, tags and payload).
pub fn copies<'a>(rows: &'a [Row], event: &Event) -> (Vec<&'a Row>, Vec<&'a Row>) {
    let tags: Vec<String> = event.tags().iter().map(ToString::to_string).collect();
    let by_id = rows.iter().filter(|r| r.id == event.id()).collect();
    let by_content = rows
        .iter()
        .filter(|r| {
            r.event_type == event.event_type() && r.tags == tags && &r.payload == event.payload()
        })
        .collect();
    (by_id, by_content)
}

/// `event` is stored exactly once, by id and by content, and at `position`.
#[track_caller]
pub fn assert_stored_once(rows: &[Row], event: &Event, position: Position) {
    let (by_id, by_content) = copies(rows, event);
    assert_eq!(by_id.len(), 1, "rows with the id of {event:?}: {rows:#?}");
    assert_eq!(
        by_content.len(),
        1,
        "rows with the content of {event:?}: {rows:#?}"
    );
    assert_eq!(
        by_id[0], by_content[0],
        "the row with the id has the content"
    );
    assert_eq!(by_id[0].position, position.get(), "{event:?}");
}

/// `event` is not stored, by id nor by content.
#[track_caller]
pub fn assert_not_stored(rows: &[Row], event: &Event) {
    let (by_id, by_content) = copies(rows, event);
    assert!(
        by_id.is_empty() && by_content.is_empty(),
        "{event:?} is stored: {rows:#?}"
    );
}

/// An event of order `order` (tagged `order:<order>`).
pub fn order_event(event_type: &str, order: &str, payload: Value) -> Event {
    Event::new(event_type, payload).tagged("order", order)
}
