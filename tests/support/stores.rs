//! Running one check on both stores, and what the checks of several files ask of a store.
//!
//! [`on_both_stores!`] turns each named check into a module with two tests, `postgres` (a fresh
//! `PostgresStore` on a database of its own) and `memory` (a fresh `MemoryStore`), both running
//! the body the caller gives, so a check written once, generic over the store, runs on both:
//!
//! ```ignore
//! #[macro_use]
//! #[path = "support/stores.rs"]
//! mod stores;
//!
//! on_both_stores!(|check, store, db| {
//!     let stored = check(&store).await;
//!     assert_tables_hold_on_postgres(db, &store, stored).await;
//! }; a_check, another_check);
//! ```
//!
//! In the body, `check` is the check of that module (`super::a_check`), `store` the fresh store
//! (owned), and `db` an `Option<&TestDatabase>`: the database on PostgreSQL, `None` on the memory
//! store. Everything of the calling file is in scope. The tests run on a multi-thread runtime of
//! four workers (a check may hold a decision at a gate); a test attribute before the body replaces
//! that, e.g. `on_both_stores!(#[tokio::test] |check, store, db| { .. }; ..)` for the
//! current-thread runtime.
#![allow(dead_code, unused_macros)] // each test binary uses part of it

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore, Position, Query, ReadOptions, SequencedEvent};

/// See the module documentation.
macro_rules! on_both_stores {
    (|$check:ident, $store:ident, $db:ident| $run:block; $($name:ident),+ $(,)?) => {
        on_both_stores!(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            |$check, $store, $db| $run;
            $($name),+
        );
    };
    (#[$test:meta] |$check:ident, $store:ident, $db:ident| $run:block; $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use super::$name as $check;

            #[$test]
            async fn postgres() {
                let database = ::dcb_runtime::testing::TestDatabase::create()
                    .await
                    .expect("test database");
                let $store = database.store().await.expect("store");
                #[allow(unused_variables)]
                let $db: Option<&::dcb_runtime::testing::TestDatabase> = Some(&database);
                $run
            }

            #[$test]
            async fn memory() {
                let $store = ::dcb_runtime::MemoryStore::new();
                #[allow(unused_variables)]
                let $db: Option<&::dcb_runtime::testing::TestDatabase> = None;
                $run
            }
        }
    )+};
}

/// Every stored event, in order.
pub async fn all_events<S: EventStore>(store: &S) -> Vec<SequencedEvent> {
    store
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read all")
        .events
}

/// The events with their positions, without `recorded_at`: comparable across stores.
pub fn strip(events: &[SequencedEvent]) -> Vec<(Position, Event)> {
    events
        .iter()
        .map(|e| (e.position, e.event.clone()))
        .collect()
}

/// On PostgreSQL (`db` is the database of `store`): the tables hold exactly `n` events, with
/// distinct ids and positions 1..=n, and exactly one `event_tags` row per tag of each stored event.
pub async fn assert_tables_hold<S: EventStore>(db: &TestDatabase, store: &S, n: usize) {
    let client = db.client().await.expect("client");
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id), coalesce(min(position), 0), \
             coalesce(max(position), 0) FROM events",
            &[],
        )
        .await
        .expect("count events");
    let n = i64::try_from(n).unwrap();
    let (count, ids, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(count, n, "rows in events");
    assert_eq!(ids, n, "distinct ids in events");
    if n > 0 {
        assert_eq!((min, max), (1, n), "positions are 1..=n");
    }
    let tags: i64 = client
        .query_one("SELECT count(*) FROM event_tags", &[])
        .await
        .expect("count event_tags")
        .get(0);
    let expected_tags: usize = all_events(store)
        .await
        .iter()
        .map(|e| e.event.tags().len())
        .sum();
    assert_eq!(
        tags,
        i64::try_from(expected_tags).unwrap(),
        "rows in event_tags"
    );
}

/// [`assert_tables_hold`] when `db` is the database of `store` (on PostgreSQL); nothing when it is
/// `None` (the memory store has no tables).
pub async fn assert_tables_hold_on_postgres<S: EventStore>(
    db: Option<&TestDatabase>,
    store: &S,
    n: usize,
) {
    if let Some(db) = db {
        assert_tables_hold(db, store, n).await;
    }
}
