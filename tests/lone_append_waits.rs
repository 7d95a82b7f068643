//! A lone append waits in the appender for company only while another writer appends to the
//! store (`store/postgres/linger.rs`), and its events are stored all the same.
//!
//! Two stores on separate pools of one database: two appenders, which is two processes as far
//! as the server can tell (the harness's multi-process runs drive the same path from OS
//! processes). The waits are counted by `dcb_append_lingers_total`.

#[path = "support/recorder.rs"]
mod recorder;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore, PostgresStore};
use recorder::recorder;
use serde_json::json;

/// Waits that ended alone so far.
fn waits_alone() -> f64 {
    recorder()
        .render()
        .lines()
        .filter(|l| l.starts_with("dcb_append_lingers_total{") && l.contains("outcome=\"alone\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn append_one(store: &PostgresStore, writer: &str, n: usize) {
    store
        .append(vec![
            Event::new("Written", json!({ "n": n })).tagged("writer", writer),
        ])
        .await
        .expect("append");
}

#[tokio::test]
async fn a_lone_append_waits_only_while_another_writer_appends() {
    recorder();
    let db = TestDatabase::create().await.expect("test database");
    let ours = db.store().await.expect("store");
    let theirs = db.store().await.expect("store");

    // One writer: each append lands right behind its previous one, and never waits.
    let before = waits_alone();
    for n in 0..20 {
        append_one(&ours, "ours", n).await;
    }
    assert_eq!(waits_alone(), before, "a lone writer waited");

    // Two writers taking turns: each append lands after the other's, so both start waiting, and
    // each append (awaited before the next is sent) waits alone.
    for n in 0..20 {
        append_one(&theirs, "theirs", n).await;
        append_one(&ours, "ours", 20 + n).await;
    }
    let waited = waits_alone() - before;
    assert!(
        waited >= 20.0,
        "only {waited} waits among 40 appends after another writer's"
    );

    let client = db.client().await.expect("client");
    let stored: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 60, "every append is stored once");
}
