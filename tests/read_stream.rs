//! The streaming read (`EventStore::read_stream`), on `MemoryStore` and on PostgreSQL: it yields
//! every match once, in order, in pages of 1,000 with non-matching events between, and stops at
//! the head it found first (events appended while it runs are not yielded); backwards and with a
//! limit and a lower bound, across page boundaries, it answers like a read.

#[path = "support/stores.rs"]
mod stores;

use std::pin::pin;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Event, EventStore, MemoryStore, P, Position, Query, QueryItem, ReadOptions, SequencedEvent,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use stores::strip;

/// Event number `n`: type A unless n is a multiple of 5, tagged `n:{n % 7}`.
fn numbered(n: usize) -> Event {
    let ty = if n.is_multiple_of(5) { "B" } else { "A" };
    Event::new(ty, json!({ "n": n })).tagged("n", (n % 7).to_string())
}

fn expected(stored: &[Event], query: &Query) -> Vec<(Position, Event)> {
    stored
        .iter()
        .enumerate()
        .filter(|(_, e)| query.matches(e))
        .map(|(i, e)| (Position::new(i64::try_from(i).unwrap() + 1), e.clone()))
        .collect()
}

/// Like `assert_eq!`, but says where two long lists of events first differ.
#[track_caller]
fn assert_same(got: &[(Position, Event)], want: &[(Position, Event)], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: first difference at index {i}: got {:?}, want {:?}",
            got[i], want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
}

async fn collect<S: EventStore>(
    store: &S,
    query: &Query,
    options: ReadOptions,
) -> Vec<(Position, Event)> {
    let events: Vec<SequencedEvent> = store
        .read_stream(query, options)
        .try_collect()
        .await
        .expect("stream");
    strip(&events)
}

async fn check_streaming<S: EventStore>(store: &S) {
    // 2,500 events in appends of 50; every event of type A matches, and the B events tagged n:0.
    let mut stored = Vec::new();
    for chunk in 0..50 {
        let events: Vec<Event> = (0..50).map(|k| numbered(chunk * 50 + k)).collect();
        store.append(events.clone()).await.expect("append");
        stored.extend(events);
    }
    let query = Query::from(QueryItem::of_types(["A"])).or(QueryItem::with_tags([P("n", "0")]));
    let matching = expected(&stored, &query);
    // More than two pages of the stream (1,000 events each), with non-matching events between.
    assert_eq!(matching.len(), 2_000 + 2_500 / 35 + 1);
    assert!(matching.iter().any(|(_, e)| e.event_type() == "B"));

    // Forward, while a writer appends matching events after the first item was read.
    let mut stream = pin!(store.read_stream(&query, ReadOptions::default()));
    let first = stream.next().await.expect("a first event").expect("stream");
    let later: Vec<Event> = (2_500..2_560).map(numbered).collect();
    assert!(later.iter().filter(|e| query.matches(e)).count() >= 40);
    store
        .append(later.clone())
        .await
        .expect("append during the stream");
    let rest: Vec<SequencedEvent> = stream.try_collect().await.expect("stream");
    let mut streamed = strip(&[first]);
    streamed.extend(strip(&rest));
    assert_same(
        &streamed,
        &matching,
        "the stream yields every match once, in order, and nothing appended later",
    );
    stored.extend(later);

    // A new stream sees the later events, which shows that they do match.
    let matching = expected(&stored, &query);
    let all = collect(store, &query, ReadOptions::default()).await;
    assert_same(&all, &matching, "a new stream");
    let read = store
        .read(&query, ReadOptions::default())
        .await
        .expect("read");
    assert_same(&strip(&read.events), &matching, "a read");

    // Backwards with a limit spanning two pages: the newest 1,500 matches, newest first.
    let newest: Vec<(Position, Event)> = matching.iter().rev().take(1_500).cloned().collect();
    let backwards = collect(
        store,
        &query,
        ReadOptions::default().backwards().limit(1_500),
    )
    .await;
    assert!(backwards.windows(2).all(|w| w[0].0 > w[1].0), "descending");
    assert_same(&backwards, &newest, "backwards: the newest 1,500 matches");

    // Backwards without a limit: every match, newest first.
    let reversed: Vec<(Position, Event)> = matching.iter().rev().cloned().collect();
    let backwards = collect(store, &query, ReadOptions::default().backwards()).await;
    assert_same(&backwards, &reversed, "backwards: every match");

    // Forward with a limit and a lower bound, across a page boundary.
    let after = matching[10].0;
    let limited = collect(
        store,
        &query,
        ReadOptions::default().after(after).limit(1_200),
    )
    .await;
    assert_same(
        &limited,
        &matching[11..1_211],
        "forward from a position with a limit",
    );
}

#[tokio::test]
async fn stream_reads_every_match_once_in_pages_and_stops_at_the_first_head() {
    check_streaming(&MemoryStore::new()).await;
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    check_streaming(&store).await;
}
