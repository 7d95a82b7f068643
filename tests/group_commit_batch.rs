//! One group-commit batch mixing passing and failing conditions: each caller gets exactly its own
//! outcome, and the store holds exactly the committed events.

#[path = "support/recorder.rs"]
mod recorder;

use std::collections::{BTreeMap, BTreeSet};

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{AppendCondition, AppendError, Appended, Event, EventStore, P, Query, QueryItem};
use recorder::recorder;
use serde_json::json;
use uuid::Uuid;

/// Passing and failing conditional appends (interleaved).
const SINGLES: usize = 400;
/// Pairs of appends whose conditions depend on each other.
const PAIRS: usize = 25;

/// `<name>_sum` and `<name>_count` of an unlabelled histogram, from an exposition.
fn histogram_sum_count(exposition: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        let series = format!("{name}{suffix} ");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.trim().parse::<f64>().expect("a number"))
    };
    (value("_sum"), value("_count"))
}

fn tag_query(key: &str, value: &str) -> Query {
    QueryItem::with_tags([P(key, value)]).into()
}

/// What one caller must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Commit,
    ConditionFailed,
    /// One of a pair: exactly one of the two commits.
    Pair(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_caller_of_a_mixed_batch_gets_its_own_outcome() {
    let metrics = recorder();
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");

    // One event already stored per failing append's boundary.
    let taken: Vec<Event> = (0..SINGLES / 2)
        .map(|i| Event::new("Taken", json!({ "i": i })).tagged("taken", i.to_string()))
        .collect();
    store.append(taken).await.expect("seed");

    // The calls, interleaved: pass, fail, pass, fail, ..., with a pair every 16 calls.
    let mut calls: Vec<(Expect, Vec<Event>, AppendCondition)> = Vec::new();
    let mut pair = 0;
    for i in 0..SINGLES {
        let k = i / 2;
        if i % 2 == 0 {
            let event = Event::new("Passing", json!({ "k": k })).tagged("fresh", k.to_string());
            calls.push((
                Expect::Commit,
                vec![event],
                AppendCondition::new(tag_query("fresh", &k.to_string()), None),
            ));
        } else {
            let event = Event::new("Failing", json!({ "k": k })).tagged("loser", k.to_string());
            calls.push((
                Expect::ConditionFailed,
                vec![event],
                AppendCondition::new(tag_query("taken", &k.to_string()), None),
            ));
        }
        if i % 16 == 7 && pair < PAIRS {
            for side in 0..2 {
                // Two events each, so a half-applied append would show.
                let events = (0..2)
                    .map(|e| {
                        Event::new("Paired", json!({ "pair": pair, "side": side, "e": e }))
                            .tagged("pair", pair.to_string())
                    })
                    .collect();
                calls.push((
                    Expect::Pair(pair),
                    events,
                    AppendCondition::new(tag_query("pair", &pair.to_string()), None),
                ));
            }
            pair += 1;
        }
    }
    assert_eq!(pair, PAIRS);
    let total = calls.len();
    assert_eq!(total, SINGLES + 2 * PAIRS);

    let (sum_before, count_before) =
        histogram_sum_count(&metrics.render(), dcb_runtime::metrics::APPEND_BATCH_SIZE);

    // All submitted before any is awaited: they queue for the one writer together.
    let outcomes: Vec<Result<Appended, AppendError>> = futures::future::join_all(
        calls
            .iter()
            .map(|(_, events, condition)| store.append_if(events.clone(), condition.clone())),
    )
    .await;

    let (sum_after, count_after) =
        histogram_sum_count(&metrics.render(), dcb_runtime::metrics::APPEND_BATCH_SIZE);

    // Each caller's own outcome.
    let mut committed: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut pair_winners: BTreeMap<usize, usize> = BTreeMap::new();
    for (index, ((expect, events, _), outcome)) in calls.iter().zip(&outcomes).enumerate() {
        let ok = match (expect, outcome) {
            (Expect::Commit | Expect::Pair(_), Ok(appended)) => {
                assert!(
                    !appended.replayed,
                    "call {index}: nothing was stored before"
                );
                let positions: Vec<i64> = appended.positions().map(|p| p.get()).collect();
                assert_eq!(positions.len(), events.len(), "call {index}: {appended:?}");
                for (event, position) in events.iter().zip(positions) {
                    committed.insert(event.id(), position);
                }
                if let Expect::Pair(p) = expect {
                    *pair_winners.entry(*p).or_default() += 1;
                }
                true
            }
            (
                Expect::ConditionFailed | Expect::Pair(_),
                Err(AppendError::ConditionFailed { after }),
            ) => {
                assert_eq!(*after, None, "call {index}: the condition's own position");
                true
            }
            _ => false,
        };
        assert!(ok, "call {index} expected {expect:?}, got {outcome:?}");
    }
    for p in 0..PAIRS {
        assert_eq!(
            pair_winners.get(&p).copied().unwrap_or(0),
            1,
            "exactly one append of pair {p} commits"
        );
    }
    assert_eq!(committed.len(), SINGLES / 2 + 2 * PAIRS);

    // The store holds exactly the committed events, at the positions their callers were told.
    let client = db.client().await.expect("client");
    let rows = client
        .query(
            "SELECT id, position FROM events WHERE type <> 'Taken' ORDER BY position",
            &[],
        )
        .await
        .expect("events");
    let stored: BTreeMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored.len(), rows.len(), "ids are unique");
    assert_eq!(stored, committed);
    let failing: i64 = client
        .query_one("SELECT count(*) FROM events WHERE type = 'Failing'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(failing, 0);
    // Positions are gapless: seeds first, then the committed events.
    let positions: BTreeSet<i64> = client
        .query("SELECT position FROM events", &[])
        .await
        .expect("positions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: BTreeSet<i64> =
        (1..=i64::try_from(SINGLES / 2 + committed.len()).unwrap()).collect();
    assert_eq!(positions, expected);

    // The calls really shared batches. (Pairs' second halves wait for the next batch, so at least
    // two batches happen; a mean above 1 needs some batch to hold several appends.)
    let batches = count_after - count_before;
    let appends = sum_after - sum_before;
    assert_eq!(
        appends, total as f64,
        "every append is counted in one batch"
    );
    let mean = appends / batches;
    eprintln!("{appends} appends in {batches} batches: mean batch size {mean:.1}");
    assert!(
        batches >= 2.0,
        "pairs cannot share a batch: {batches} batches"
    );
    assert!(
        mean > 1.0,
        "no batch held more than one append: mean {mean}"
    );
}
