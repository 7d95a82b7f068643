//! `connect` opens the connections a process keeps busy and readies each before the store is
//! handed out (`PostgresStoreBuilder::warm_connections`), storing nothing.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, PostgresStore};

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
