//! Builders refuse settings they cannot work with, with a typed error naming the setting,
//! instead of silently changing them.

use std::time::Duration;

use dcb_runtime::{MemoryStore, PostgresStore, RuntimeBuilder, StoreError};

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, StoreError>, setting: &str) {
    match result {
        Err(StoreError::Setting { name, .. }) => assert_eq!(name, setting),
        other => panic!("{setting}: expected StoreError::Setting, got {other:?}"),
    }
}

#[tokio::test]
async fn the_runtime_builder_refuses_zero_counts_and_a_cap_below_the_base() {
    let builder = || RuntimeBuilder::new(MemoryStore::new());
    assert_refused(builder().actors(0).start().await, "actors");
    assert_refused(builder().queue_capacity(0).start().await, "queue_capacity");
    assert_refused(builder().max_chain(0).start().await, "max_chain");
    assert_refused(builder().max_attempts(0).start().await, "max_attempts");
    let refused = builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(1))
        .start()
        .await;
    assert_refused(refused, "backoff");
    // The smallest valid values start.
    let runtime = builder()
        .actors(1)
        .queue_capacity(1)
        .max_chain(1)
        .max_attempts(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .start()
        .await
        .expect("valid settings");
    runtime.shutdown().await;
}

#[tokio::test]
async fn the_store_builder_refuses_zero_counts_and_an_unspecified_appender_address_before_connecting()
 {
    // No server answers here: the settings are refused before any connection is tried.
    let url = "postgres://nobody@127.0.0.1:1/none";
    assert_refused(
        PostgresStore::builder(url).pool_size(0).connect().await,
        "pool_size",
    );
    assert_refused(
        PostgresStore::builder(url).max_batch(0).connect().await,
        "max_batch",
    );
    for unspecified in ["0.0.0.0:0", "[::]:7000"] {
        let refused = PostgresStore::builder(url)
            .shared_appender(unspecified.parse().expect("an address"))
            .connect()
            .await;
        assert_refused(refused, "shared_appender");
    }
    assert!(
        PostgresStore::builder(url)
            .shared_appender("127.0.0.1:0".parse().expect("an address"))
            .connect()
            .await
            .is_err_and(|e| !matches!(e, StoreError::Setting { .. })),
        "and with valid settings the unreachable server is the error"
    );
}

#[tokio::test]
async fn the_runtime_builder_refuses_a_forward_address_others_cannot_connect_to() {
    let db = dcb_runtime::testing::TestDatabase::create()
        .await
        .expect("test database");
    for unspecified in ["0.0.0.0:0", "[::]:7000"] {
        let refused = dcb_runtime::Runtime::builder(db.store().await.expect("store"))
            .forward_address(unspecified.parse().expect("an address"))
            .start()
            .await;
        assert_refused(refused, "forward_address");
    }
    let runtime = dcb_runtime::Runtime::builder(db.store().await.expect("store"))
        .forward_address("127.0.0.1:0".parse().expect("an address"))
        .start()
        .await
        .expect("a loopback address");
    runtime.shutdown().await;
}
