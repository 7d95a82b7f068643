//! Disjoint boundaries never conflict: concurrent conditional appends whose conditions cover
//! different tags all succeed, however the writers interleave (no false conflicts, unlike a
//! SERIALIZABLE check whose predicate locks cover the whole end of the table).

use std::sync::Arc;
use std::time::Instant;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Event, EventStore, P, PostgresStore, Query, QueryItem,
    ReadOptions,
};
use serde_json::json;
use tokio::sync::Barrier;

const TASKS: usize = 16;
const APPENDS_PER_TASK: usize = 50;
const STORES: usize = 4;
const POOL: usize = 4;

/// One task: reads its own boundary and appends on condition that it did not change, 50 times.
/// Returns how many of its conditions failed.
async fn append_own(store: PostgresStore, task: usize, start: Arc<Barrier>) -> u64 {
    let own = Query::from(QueryItem::with_tags([P("task", task.to_string())]));
    start.wait().await;
    let mut conflicts = 0;
    let mut stored = 0;
    for i in 0..APPENDS_PER_TASK {
        let read = store
            .read(&own, ReadOptions::default())
            .await
            .expect("read own boundary");
        assert_eq!(read.events.len(), stored, "task {task} sees its own events");
        let event =
            Event::new("Counted", json!({"task": task, "i": i})).tagged("task", task.to_string());
        match store
            .append_if(vec![event], AppendCondition::new(own.clone(), read.head))
            .await
        {
            Ok(_) => stored += 1,
            Err(AppendError::ConditionFailed { .. }) => conflicts += 1,
            Err(e) => panic!("append_if failed: {e:?}"),
        }
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disjoint_boundaries_never_conflict() {
    let db = TestDatabase::create().await.expect("test database");
    let mut stores = Vec::with_capacity(STORES);
    for _ in 0..STORES {
        stores.push(
            PostgresStore::builder(db.url())
                .pool_size(POOL)
                .connect()
                .await
                .expect("store"),
        );
    }
    let start = Arc::new(Barrier::new(TASKS));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(append_own(stores[t % STORES].clone(), t, start.clone())))
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("appending task");
    }
    let elapsed = started.elapsed();

    let client = db.client().await.expect("sql client");
    let rows = client
        .query(
            "SELECT payload->>'task', count(*) FROM events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("count per task");
    let total: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    eprintln!(
        "disjoint boundaries: {total} events by {TASKS} tasks on {STORES} stores in {elapsed:?}, \
         {conflicts} conflicts"
    );
    assert_eq!(conflicts, 0, "appends on disjoint boundaries conflicted");
    assert_eq!(rows.len(), TASKS);
    for r in &rows {
        assert_eq!(
            r.get::<_, i64>(1),
            i64::try_from(APPENDS_PER_TASK).unwrap(),
            "task {}",
            r.get::<_, String>(0)
        );
    }
    assert_eq!(total, i64::try_from(TASKS * APPENDS_PER_TASK).unwrap());
}
