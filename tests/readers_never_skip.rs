//! Readers never skip: a reader that moves its cursor to the last position it saw must later see
//! every event stored after it, because positions are assigned in commit order.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Event, EventStore, P, Position, PostgresStore, Query, QueryItem,
    ReadOptions,
};
use serde_json::json;
use uuid::Uuid;

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 60;
const STORES: usize = 4;
const POOL: usize = 4;

async fn stores(url: &str) -> Vec<PostgresStore> {
    let mut stores = Vec::with_capacity(STORES);
    for _ in 0..STORES {
        stores.push(
            PostgresStore::builder(url)
                .pool_size(POOL)
                .connect()
                .await
                .expect("store"),
        );
    }
    stores
}

/// One writer: alternates plain appends of 1 to 3 events and conditional appends on its own tag,
/// so batches of the group committers mix both and hold several events per request.
async fn write(store: PostgresStore, writer: usize) -> u64 {
    let own = Query::from(QueryItem::with_tags([P("writer", writer.to_string())]));
    let mut conflicts = 0;
    for i in 0..APPENDS_PER_WRITER {
        let events: Vec<Event> = (0..=(i % 3))
            .map(|k| {
                Event::new("Written", json!({"writer": writer, "i": i, "k": k}))
                    .tagged("writer", writer.to_string())
                    .tagged("parity", if i % 2 == 0 { "even" } else { "odd" })
            })
            .collect();
        if i % 2 == 0 {
            store.append(events).await.expect("append");
        } else {
            loop {
                let head = store
                    .read(&own, ReadOptions::default())
                    .await
                    .expect("read own boundary")
                    .head;
                match store
                    .append_if(events.clone(), AppendCondition::new(own.clone(), head))
                    .await
                {
                    Ok(_) => break,
                    Err(AppendError::ConditionFailed { .. }) => conflicts += 1,
                    Err(e) => panic!("append_if failed: {e:?}"),
                }
            }
        }
    }
    conflicts
}

/// What a cursor reader saw, read by read.
#[derive(Debug, Default)]
struct Seen {
    positions: Vec<Position>,
    ids: Vec<Uuid>,
    reads: u64,
    /// Reads that returned events while the writers were still running.
    reads_with_events_during_writes: u64,
}

/// Reads `after = cursor` (in pages of `limit` when given) until told the writers are done, then
/// once more to the end.
async fn follow(
    store: PostgresStore,
    query: Query,
    limit: Option<usize>,
    writers_done: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut cursor: Option<Position> = None;
    loop {
        // Sampled before the read: a read that starts after the writers finished sees everything.
        let last_round = writers_done.load(Ordering::Acquire);
        loop {
            let mut options = ReadOptions::default().after_opt(cursor);
            if let Some(l) = limit {
                options = options.limit(l);
            }
            let read = store.read(&query, options).await.expect("cursor read");
            seen.reads += 1;
            if !last_round && !read.events.is_empty() {
                seen.reads_with_events_during_writes += 1;
            }
            for e in &read.events {
                seen.positions.push(e.position);
                seen.ids.push(e.event.id());
            }
            let full_page = limit.is_some_and(|l| read.events.len() == l);
            if let Some(last) = read.events.last() {
                cursor = Some(last.position);
            }
            if !full_page {
                break;
            }
        }
        if last_round {
            return seen;
        }
    }
}

/// The ids and positions stored that match `filter` (SQL), in position order.
async fn stored(client: &tokio_postgres::Client, filter: &str) -> Vec<(i64, Uuid)> {
    client
        .query(
            &format!("SELECT position, id FROM events WHERE {filter} ORDER BY position"),
            &[],
        )
        .await
        .expect("stored events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn check(name: &str, seen: &Seen, stored: &[(i64, Uuid)]) {
    assert!(
        seen.positions.windows(2).all(|w| w[0] < w[1]),
        "{name}: positions seen out of order"
    );
    let distinct: HashSet<Uuid> = seen.ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seen.ids.len(),
        "{name}: an event seen twice"
    );
    let expected: Vec<(i64, Uuid)> = stored.to_vec();
    let got: Vec<(i64, Uuid)> = seen
        .positions
        .iter()
        .map(|p| p.get())
        .zip(seen.ids.iter().copied())
        .collect();
    if got != expected {
        let got_ids: HashSet<Uuid> = got.iter().map(|(_, id)| *id).collect();
        let missed: Vec<_> = expected
            .iter()
            .filter(|(_, id)| !got_ids.contains(id))
            .collect();
        panic!(
            "{name}: saw {} events, {} stored; missed {missed:?}",
            got.len(),
            expected.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_reader_sees_every_event_exactly_once_while_writers_append() {
    let db = TestDatabase::create().await.expect("test database");
    let stores = stores(db.url()).await;
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // One reader of everything, one of a tag boundary in small pages, on their own store.
    let reader_store = db.store().await.expect("reader store");
    let all_reader = tokio::spawn(follow(
        reader_store.clone(),
        Query::all(),
        None,
        done.clone(),
    ));
    let even_reader = tokio::spawn(follow(
        reader_store,
        Query::from(QueryItem::new(["Written"], [P("parity", "even")])),
        Some(7),
        done.clone(),
    ));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(stores[w % STORES].clone(), w)))
        .collect();
    let mut conflicts = 0;
    for w in writers {
        conflicts += w.await.expect("writer");
    }
    let writing = started.elapsed();
    done.store(true, Ordering::Release);
    let all = all_reader.await.expect("reader of all");
    let even = even_reader.await.expect("reader of even");

    let client = db.client().await.expect("sql client");
    let stored_all = stored(&client, "true").await;
    let stored_even = stored(&client, "type = 'Written' AND 'parity:even' = ANY(tags)").await;
    eprintln!(
        "readers never skip: {} events by {WRITERS} writers in {writing:?} ({conflicts} conflicts); \
         all-reader {} reads ({} with events during writes), even-reader {} reads ({} during writes), \
         {} even events",
        stored_all.len(),
        all.reads,
        all.reads_with_events_during_writes,
        even.reads,
        even.reads_with_events_during_writes,
        stored_even.len(),
    );
    let per_writer: usize = (0..APPENDS_PER_WRITER).map(|i| i % 3 + 1).sum();
    assert_eq!(stored_all.len(), WRITERS * per_writer);
    check("reader of all", &all, &stored_all);
    check("reader of even", &even, &stored_even);
    // The reads really interleaved with the writes.
    assert!(all.reads_with_events_during_writes > 1);
    assert!(even.reads_with_events_during_writes > 1);
    assert_eq!(conflicts, 0, "writers on disjoint tags never conflict");
}

/// Polls `check` until it answers true, failing after `deadline`.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Backends of this database waiting for an advisory lock.
async fn advisory_waiters(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE d.datname = current_database() AND l.locktype = 'advisory' AND NOT l.granted",
            &[],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_started_first_and_commits_last_is_not_skipped() {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    let seed = store
        .append(vec![Event::new("Seed", json!({})).tagged("k", "v")])
        .await
        .expect("seed");
    // The cursor reader catches up with the store.
    let read = store
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read");
    let cursor = read.events.last().expect("the seed").position;
    assert_eq!(cursor, seed.last);

    // The first writer: dcb_append called by hand in a transaction left open.
    let mut raw = db.client().await.expect("raw client");
    let tx = raw.transaction().await.expect("begin");
    let first_id = Uuid::now_v7();
    let no_text: Vec<&str> = Vec::new();
    let no_int: Vec<i32> = Vec::new();
    let row = tx
        .query_one(
            "SELECT statuses, firsts, dups FROM dcb_append(\
             $1, $2, $3, $4, $5, $6, $7, $8::text[]::jsonb[], $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19)",
            &[
                &vec![1_i32],
                &vec![0_i32],
                &vec![first_id],
                &vec!["First"],
                &vec!["k:v"],
                &vec![1_i32],
                &vec![1_i32],
                &vec![r#"{"n": 1}"#],
                &vec![1_i32],
                &vec![false],
                &vec![None::<i64>],
                &no_int,
                &no_text,
                &no_int,
                &no_int,
                &no_text,
                &no_int,
                &no_int,
                &vec![None::<Uuid>],
            ],
        )
        .await
        .expect("dcb_append in the open transaction");
    assert_eq!(row.get::<_, Vec<i16>>(0), [0], "appended");
    let first_position: i64 = row.get::<_, Vec<i64>>(1)[0];

    // The second writer starts after the first and must queue behind its lock.
    let second = Event::new("Second", json!({"n": 2})).tagged("k", "v");
    let second_id = second.id();
    let second_store = store.clone();
    let second_append = tokio::spawn(async move { second_store.append(vec![second]).await });
    let observer = db.client().await.expect("observer");
    eventually(
        "the second writer waits on the advisory lock",
        Duration::from_secs(10),
        || async { advisory_waiters(&observer).await == 1 },
    )
    .await;
    assert!(!second_append.is_finished(), "the second append is blocked");

    // Neither is visible yet, and the head has not moved.
    let during = store
        .read(&Query::all(), ReadOptions::default().after(cursor))
        .await
        .expect("read while both are in flight");
    assert!(
        during.events.is_empty(),
        "saw uncommitted events: {during:?}"
    );
    assert_eq!(during.head, Some(cursor));

    tx.commit().await.expect("commit the first writer");
    let second_appended = tokio::time::timeout(Duration::from_secs(10), second_append)
        .await
        .expect("the second append finishes once the first commits")
        .expect("second writer task")
        .expect("second append");

    // Positions in commit order: the first writer's event comes first.
    assert!(
        first_position < second_appended.first.get(),
        "first at {first_position}, second at {}",
        second_appended.first
    );
    let after = store
        .read(&Query::all(), ReadOptions::default().after(cursor))
        .await
        .expect("read after both committed");
    let got: Vec<(i64, Uuid)> = after
        .events
        .iter()
        .map(|e| (e.position.get(), e.event.id()))
        .collect();
    assert_eq!(
        got,
        [(cursor.get() + 1, first_id), (cursor.get() + 2, second_id)],
        "both events after the cursor, in commit order, without a gap"
    );
    assert_eq!(after.head, Some(Position::new(cursor.get() + 2)));
    assert_eq!(after.events[0].event.event_type(), "First");
    assert_eq!(after.events[0].event.tags(), &[P("k", "v")]);
}
