//! `connect` opens the connections a process keeps busy and readies each before the store is
//! handed out (`PostgresStoreBuilder::warm_connections`), storing nothing; and the pool hands out
//! the connection used last, so that the load stays on the few backends it needs.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, PostgresStore, Query, QueryItem, Tag};

/// The backends connected to the test's database, other than the one asking.
async fn backends(db: &TestDatabase) -> i64 {
    db.client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn connect_opens_the_warm_connections_and_stores_nothing() {
    let db = TestDatabase::create().await.expect("test database");
    for (warm, pool, open) in [(4, 16, 4), (8, 3, 3), (0, 16, 1)] {
        let store = PostgresStore::builder(db.url())
            .pool_size(pool)
            .warm_connections(warm)
            .connect()
            .await
            .expect("store");
        let status = store.pool_status().expect("a pool");
        assert_eq!(status.size, open, "warm {warm}, pool {pool}: {status:?}");
        assert_eq!(status.available, open, "all handed back: {status:?}");
        assert_eq!(backends(&db).await, open as i64, "warm {warm}, pool {pool}");
        drop(store);
        // The next store counts its own backends only.
        while backends(&db).await > 0 {
            tokio::task::yield_now().await;
        }
    }
    let stored: i64 = db
        .client()
        .await
        .expect("client")
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "the empty appends stored nothing");
}

#[tokio::test]
async fn reads_one_after_another_reuse_the_connection_used_last() {
    let db = TestDatabase::create().await.expect("test database");
    let store = PostgresStore::builder(db.url())
        .warm_connections(4)
        .connect()
        .await
        .expect("store");
    // Each readied connection ran an empty append last.
    let query: Query = QueryItem::with_tags([Tag::new("lifo", "probe")]).into();
    for _ in 0..12 {
        store.read(&query, Default::default()).await.expect("read");
    }
    let reading: i64 = db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND query LIKE 'SELECT h.head%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    // First in, first out would have rotated the reads through all four.
    assert_eq!(reading, 1, "the reads went to {reading} connections");
}
