//! Idempotent appends against the real PostgreSQL store and the in-memory reference model.
//!
//! Re-sending an append whose events (same ids, same content) are stored answers their original
//! positions and stores nothing; the same id with other content, or an append overlapping stored
//! ids only in part, is `DuplicateEventId`. Each check is written once, generic over the store,
//! and run on both; on PostgreSQL the tables are counted with plain SQL afterwards.

#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, Event, EventStore, P, Position, PostgresStore, Query,
    QueryItem, ReadOptions,
};
use futures::future::join_all;
use serde_json::json;
use stores::{all_events, assert_tables_hold, assert_tables_hold_on_postgres};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

// Each named check on a fresh PostgreSQL database and on a fresh `MemoryStore`. A check returns
// how many events must be stored when it is done; on PostgreSQL that is verified with SQL on both
// tables.
on_both_stores!(
    #[tokio::test]
    |check, store, db| {
        let stored = check(&store).await;
        assert_tables_hold_on_postgres(db, &store, stored).await;
    };
    a_resent_append_returns_the_original_positions,
    a_resent_append_if_replays_even_when_its_condition_would_now_fail,
    the_same_id_with_another_payload_is_a_duplicate,
    the_same_id_with_another_type_is_a_duplicate,
    the_same_id_with_other_tags_is_a_duplicate,
    a_payload_differing_only_in_how_a_number_is_written_is_a_duplicate,
    an_append_overlapping_stored_ids_in_part_is_a_duplicate,
    identical_appends_submitted_together_store_once,
    fifty_identical_first_sends_at_once_store_once,
    fifty_concurrent_resends_all_replay,
    a_resend_racing_a_conditional_copy_stores_once,
    an_append_answers_when_it_stored_its_events_and_a_replay_does_not,
);

/// The events as stored, without positions.
async fn stored_events<S: EventStore>(s: &S) -> Vec<Event> {
    all_events(s).await.into_iter().map(|e| e.event).collect()
}

/// Where an append's events are: compared with an [`Appended`] by positions and `replayed`
/// (its `recorded_at` is a time of the run).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placed {
    first: Position,
    last: Position,
    replayed: bool,
}

impl PartialEq<Placed> for Appended {
    fn eq(&self, p: &Placed) -> bool {
        (self.first, self.last, self.replayed) == (p.first, p.last, p.replayed)
    }
}

fn appended(first: i64, last: i64, replayed: bool) -> Placed {
    Placed {
        first: Position::new(first),
        last: Position::new(last),
        replayed,
    }
}

/// The append was refused as a duplicate of `id`.
#[track_caller]
fn assert_duplicate_of(outcome: Result<Appended, AppendError>, id: Uuid) {
    match outcome {
        Err(AppendError::DuplicateEventId(d)) => assert_eq!(d, id, "the id named"),
        other => panic!("expected DuplicateEventId({id}), got {other:?}"),
    }
}

/// The append was refused as a duplicate, naming one of `ids`.
#[track_caller]
fn assert_duplicate_of_one_of(outcome: Result<Appended, AppendError>, ids: &[Uuid]) {
    match outcome {
        Err(AppendError::DuplicateEventId(d)) => {
            assert!(ids.contains(&d), "{d} is not one of the stored ids {ids:?}");
        }
        other => panic!("expected DuplicateEventId(one of {ids:?}), got {other:?}"),
    }
}

/// A condition that fails whenever any event is stored.
fn fails_on_anything() -> AppendCondition {
    AppendCondition::new(Query::all(), None)
}

/// A few events of varied shape: no tags and a null payload, several tags and a nested payload,
/// unicode everywhere.
fn batch(label: &str) -> Vec<Event> {
    vec![
        Event::new(format!("{label}Started"), json!(null)),
        Event::new(
            format!("{label}Moved"),
            json!({"from": {"x": 1.5, "y": -2}, "to": [3, 4], "big": 9_007_199_254_740_993_u64}),
        )
        .tagged("label", label)
        .tagged("leg", "1"),
        Event::new(
            format!("{label}Arrivé"),
            json!({"note": "naïve 🦀 שלום", "ok": true}),
        )
        .tagged("label", label)
        .tagged("city", "Zürich"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Re-sending stored events
// ---------------------------------------------------------------------------------------------

/// `recorded_at` is the time a read returns for every event of the append (the runtime folds its
/// own events with it instead of reading them back); a replay stored nothing and has none.
async fn an_append_answers_when_it_stored_its_events_and_a_replay_does_not<S: EventStore>(
    s: &S,
) -> usize {
    let first = batch("A");
    let a = s.append(first.clone()).await.unwrap();
    let b = s
        .append_if(batch("B"), AppendCondition::new(Query::all(), Some(a.last)))
        .await
        .unwrap();
    let stored = all_events(s).await;
    for (appended, events) in [(a, &stored[..3]), (b, &stored[3..])] {
        let at = appended
            .recorded_at
            .expect("a fresh append says when it stored");
        for e in events {
            assert_eq!(e.recorded_at, at, "event at {}", e.position);
        }
    }
    let replay = s.append(first).await.unwrap();
    assert_eq!(replay, appended(1, 3, true));
    assert_eq!(replay.recorded_at, None);
    6
}

async fn a_resent_append_returns_the_original_positions<S: EventStore>(s: &S) -> usize {
    let before = Event::new("Before", json!({}));
    s.append(vec![before.clone()]).await.unwrap();
    let events = batch("A");
    assert_eq!(
        s.append(events.clone()).await.unwrap(),
        appended(2, 4, false)
    );
    let after = Event::new("After", json!({})).tagged("label", "A");
    assert_eq!(
        s.append(vec![after.clone()]).await.unwrap(),
        appended(5, 5, false)
    );

    // Re-sent, again and again: the original positions, nothing new.
    for _ in 0..3 {
        assert_eq!(
            s.append(events.clone()).await.unwrap(),
            appended(2, 4, true)
        );
    }
    // A single-event append likewise.
    assert_eq!(
        s.append(vec![after.clone()]).await.unwrap(),
        appended(5, 5, true)
    );
    assert_eq!(
        s.append(vec![before.clone()]).await.unwrap(),
        appended(1, 1, true)
    );

    let mut expected = vec![before];
    expected.extend(events);
    expected.push(after);
    assert_eq!(stored_events(s).await, expected);
    let head = s
        .read(&Query::all(), ReadOptions::default().limit(0))
        .await
        .unwrap()
        .head;
    assert_eq!(head, Some(Position::new(5)));
    5
}

async fn a_resent_append_if_replays_even_when_its_condition_would_now_fail<S: EventStore>(
    s: &S,
) -> usize {
    let account = Query::from(QueryItem::with_tags([P("account", "1")]));
    let opened = Event::new("AccountOpened", json!({"owner": "o"})).tagged("account", "1");
    let cond = AppendCondition::new(account.clone(), None);
    assert_eq!(
        s.append_if(vec![opened.clone()], cond.clone())
            .await
            .unwrap(),
        appended(1, 1, false)
    );
    // The condition now fails for new events: the stored event itself matches it.
    let outcome = s
        .append_if(
            vec![Event::new("AccountOpened", json!({})).tagged("account", "1")],
            cond.clone(),
        )
        .await;
    assert!(
        matches!(outcome, Err(AppendError::ConditionFailed { after: None })),
        "{outcome:?}"
    );
    // Yet re-sending the stored event with it is a replay, not a failed condition.
    assert_eq!(
        s.append_if(vec![opened.clone()], cond.clone())
            .await
            .unwrap(),
        appended(1, 1, true)
    );
    // More matching events later change nothing about that.
    let deposit = Event::new("Deposited", json!({"amount": 10})).tagged("account", "1");
    let cond_at_1 = AppendCondition::new(account.clone(), Some(Position::new(1)));
    assert_eq!(
        s.append_if(vec![deposit.clone()], cond_at_1.clone())
            .await
            .unwrap(),
        appended(2, 2, false)
    );
    for condition in [
        cond,
        cond_at_1.clone(),
        fails_on_anything(),
        AppendCondition::new(Query::all(), Some(Position::new(0))),
    ] {
        assert_eq!(
            s.append_if(vec![opened.clone()], condition.clone())
                .await
                .unwrap(),
            appended(1, 1, true),
            "opened, {condition:?}"
        );
        assert_eq!(
            s.append_if(vec![deposit.clone()], condition.clone())
                .await
                .unwrap(),
            appended(2, 2, true),
            "deposit, {condition:?}"
        );
    }
    assert_eq!(stored_events(s).await, [opened, deposit]);
    2
}

// ---------------------------------------------------------------------------------------------
// The same id with other content
// ---------------------------------------------------------------------------------------------

/// Stores `original`, then offers each variant (the same id, other content) through `append` and
/// `append_if`: each is a duplicate of the original's id, and the original stays as it was.
async fn assert_variants_are_duplicates<S: EventStore>(
    s: &S,
    original: Event,
    variants: Vec<Event>,
) {
    let id = original.id();
    let stored = s.append(vec![original.clone()]).await.unwrap();
    assert!(!stored.replayed);
    let snapshot = all_events(s).await;
    for variant in variants {
        assert_eq!(variant.id(), id);
        assert_ne!(variant, original, "a variant must differ from the original");
        assert_duplicate_of(s.append(vec![variant.clone()]).await, id);
        // A condition that would pass, and one that would fail: the id decides first.
        let passes = AppendCondition::new(QueryItem::of_types(["Nothing"]).into(), None);
        assert_duplicate_of(s.append_if(vec![variant.clone()], passes).await, id);
        assert_duplicate_of(
            s.append_if(vec![variant.clone()], fails_on_anything())
                .await,
            id,
        );
        assert_eq!(all_events(s).await, snapshot, "after {variant:?}");
    }
    // The original itself is still a replay.
    assert_eq!(
        s.append(vec![original]).await.unwrap(),
        stored.replayed(true)
    );
}

trait Replayed {
    /// The same positions, as a replay answers them (`replayed`, and no time: it stored nothing).
    fn replayed(self, replayed: bool) -> Self;
}

impl Replayed for Appended {
    fn replayed(mut self, replayed: bool) -> Self {
        self.replayed = replayed;
        if replayed {
            self.recorded_at = None;
        }
        self
    }
}

async fn the_same_id_with_another_payload_is_a_duplicate<S: EventStore>(s: &S) -> usize {
    let id = Uuid::now_v7();
    let with = |payload| Event::new("Paid", payload).with_id(id).tagged("order", "7");
    let original = with(json!({"amount": 100, "note": "é", "big": 9_007_199_254_740_993_u64}));
    let variants = vec![
        with(json!({"amount": 101, "note": "é", "big": 9_007_199_254_740_993_u64})),
        with(json!({"amount": 100, "note": "é", "big": 9_007_199_254_740_993_u64, "x": 1})),
        with(json!({"amount": 100, "note": "é"})),
        with(json!({"amount": "100", "note": "é", "big": 9_007_199_254_740_993_u64})),
        // Canonically equivalent, but other code points.
        with(json!({"amount": 100, "note": "e\u{301}", "big": 9_007_199_254_740_993_u64})),
        // One off, beyond the precision of a double.
        with(json!({"amount": 100, "note": "é", "big": 9_007_199_254_740_992_u64})),
        with(json!(null)),
        with(json!([])),
    ];
    assert_variants_are_duplicates(s, original, variants).await;
    1
}

async fn the_same_id_with_another_type_is_a_duplicate<S: EventStore>(s: &S) -> usize {
    let id = Uuid::now_v7();
    let with = |t: &str| Event::new(t, json!({"n": 1})).with_id(id).tagged("k", "v");
    let variants = vec![
        with("Shipped"),
        with("placed"),
        with("Placed "),
        with("Placed\u{200b}"),
    ];
    assert_variants_are_duplicates(s, with("Placed"), variants).await;
    1
}

async fn the_same_id_with_other_tags_is_a_duplicate<S: EventStore>(s: &S) -> usize {
    let id = Uuid::now_v7();
    let plain = || Event::new("Tagged", json!({})).with_id(id);
    let original = plain().tagged("a", "1").tagged("b", "2");
    let variants = vec![
        plain(),
        plain().tagged("a", "1"),
        plain().tagged("a", "1").tagged("b", "2").tagged("c", "3"),
        plain().tagged("a", "1").tagged("b", "3"),
        plain().tagged("a", "1").tagged("B", "2"),
    ];
    assert_variants_are_duplicates(s, original, variants).await;
    // The refused tags left no trace in the index.
    for tag in [P("c", "3"), P("b", "3"), P("B", "2")] {
        let read = s
            .read(
                &QueryItem::with_tags([tag.clone()]).into(),
                ReadOptions::default(),
            )
            .await
            .unwrap();
        assert!(read.events.is_empty(), "tag {tag} found: {:?}", read.events);
    }

    // And an event stored without tags is not the same as one with a tag.
    let bare_id = Uuid::now_v7();
    let bare = Event::new("Bare", json!({})).with_id(bare_id);
    assert_variants_are_duplicates(s, bare.clone(), vec![bare.tagged("a", "1")]).await;
    2
}

/// `{"n": 1}` and `{"n": 1.0}` are different `serde_json::Value`s and read back differently, so
/// an event carrying one is not the event carrying the other (the reference model agrees).
async fn a_payload_differing_only_in_how_a_number_is_written_is_a_duplicate<S: EventStore>(
    s: &S,
) -> usize {
    let id = Uuid::now_v7();
    let with = |payload| Event::new("Measured", payload).with_id(id);
    let variants = vec![with(json!({"n": 1.0})), with(json!({"n": 1e0}))];
    assert_variants_are_duplicates(s, with(json!({"n": 1})), variants).await;
    1
}

// ---------------------------------------------------------------------------------------------
// Partial overlap
// ---------------------------------------------------------------------------------------------

async fn an_append_overlapping_stored_ids_in_part_is_a_duplicate<S: EventStore>(s: &S) -> usize {
    let ev = |t: &str| Event::new(t, json!({"t": t})).tagged("k", t);
    let (a, b, x, c) = (ev("A"), ev("B"), ev("X"), ev("C"));
    s.append(vec![a.clone(), b.clone()]).await.unwrap();
    s.append(vec![x.clone()]).await.unwrap();
    s.append(vec![c.clone()]).await.unwrap();
    let snapshot = all_events(s).await;
    let new = || ev("New");

    // One stored event with new ones, wherever it stands.
    assert_duplicate_of(s.append(vec![a.clone(), new()]).await, a.id());
    assert_duplicate_of(s.append(vec![new(), b.clone()]).await, b.id());
    assert_duplicate_of(s.append(vec![new(), c.clone(), new()]).await, c.id());
    // The whole of a stored append and more.
    assert_duplicate_of_one_of(
        s.append(vec![a.clone(), b.clone(), new()]).await,
        &[a.id(), b.id()],
    );
    // A stored append's events in another order.
    assert_duplicate_of_one_of(
        s.append(vec![b.clone(), a.clone()]).await,
        &[a.id(), b.id()],
    );
    // Events of different appends, with another event stored between them.
    assert_duplicate_of_one_of(
        s.append(vec![b.clone(), c.clone()]).await,
        &[b.id(), c.id()],
    );
    // With a condition, passing or failing: the overlap decides.
    let passes = AppendCondition::new(QueryItem::of_types(["Nothing"]).into(), None);
    assert_duplicate_of(s.append_if(vec![new(), a.clone()], passes).await, a.id());
    assert_duplicate_of(
        s.append_if(vec![c.clone(), new()], fails_on_anything())
            .await,
        c.id(),
    );

    assert_eq!(
        all_events(s).await,
        snapshot,
        "nothing of a refused append is stored"
    );
    let new_ones = s
        .read(&QueryItem::of_types(["New"]).into(), ReadOptions::default())
        .await
        .unwrap();
    assert!(new_ones.events.is_empty());
    4
}

// ---------------------------------------------------------------------------------------------
// Concurrent re-sends
// ---------------------------------------------------------------------------------------------

/// All outcomes are the same positions; exactly `fresh` of them stored the events.
#[track_caller]
fn assert_one_position(outcomes: &[Result<Appended, AppendError>], fresh: usize) -> Appended {
    let ok: Vec<Appended> = outcomes
        .iter()
        .map(|o| match o {
            Ok(a) => *a,
            Err(e) => panic!("every identical append must succeed, got {e:?}"),
        })
        .collect();
    let first = ok[0];
    for a in &ok {
        assert_eq!((a.first, a.last), (first.first, first.last), "{ok:?}");
    }
    assert_eq!(
        ok.iter().filter(|a| !a.replayed).count(),
        fresh,
        "appends that stored the events: {ok:?}"
    );
    first
}

async fn identical_appends_submitted_together_store_once<S: EventStore>(s: &S) -> usize {
    let events = batch("Twin");
    let (one, two) = tokio::join!(s.append(events.clone()), s.append(events.clone()));
    let a = assert_one_position(&[one, two], 1);
    assert_eq!((a.first, a.last), (Position::new(1), Position::new(3)));
    assert_eq!(stored_events(s).await, events);

    // And as conditional appends on the same (empty-before) boundary.
    let more = batch("Triplet");
    let cond = AppendCondition::new(
        QueryItem::with_tags([P("label", "Triplet")]).into(),
        Some(Position::new(3)),
    );
    let (one, two, three) = tokio::join!(
        s.append_if(more.clone(), cond.clone()),
        s.append_if(more.clone(), cond.clone()),
        s.append(more.clone()),
    );
    let a = assert_one_position(&[one, two, three], 1);
    assert_eq!((a.first, a.last), (Position::new(4), Position::new(6)));
    6
}

async fn fifty_identical_first_sends_at_once_store_once<S: EventStore>(s: &S) -> usize {
    s.append(vec![Event::new("First", json!({}))])
        .await
        .unwrap();
    let events = batch("Fifty");
    let outcomes = join_all((0..50).map(|_| s.append(events.clone()))).await;
    let a = assert_one_position(&outcomes, 1);
    assert_eq!((a.first, a.last), (Position::new(2), Position::new(4)));
    assert_eq!(stored_events(s).await[1..], events);
    4
}

async fn fifty_concurrent_resends_all_replay<S: EventStore>(s: &S) -> usize {
    let events = batch("Resent");
    let original = s.append(events.clone()).await.unwrap();
    s.append(vec![
        Event::new("Later", json!({})).tagged("label", "Resent"),
    ])
    .await
    .unwrap();
    // Half plain, half with a condition that now fails (events of the boundary were stored
    // after `after`).
    let stale = AppendCondition::new(QueryItem::with_tags([P("label", "Resent")]).into(), None);
    let outcomes = join_all((0..50).map(|i| {
        let events = events.clone();
        let stale = stale.clone();
        async move {
            if i % 2 == 0 {
                s.append(events).await
            } else {
                s.append_if(events, stale).await
            }
        }
    }))
    .await;
    let a = assert_one_position(&outcomes, 0);
    assert_eq!(a, original.replayed(true));
    assert_eq!(stored_events(s).await[..3], events);
    4
}

/// The same event sent at once unconditionally and under a condition that fails: whichever runs
/// first, it is stored once and neither answer contradicts that.
async fn a_resend_racing_a_conditional_copy_stores_once<S: EventStore>(s: &S) -> usize {
    s.append(vec![Event::new("Blocker", json!({})).tagged("k", "v")])
        .await
        .unwrap();
    let event = Event::new("Raced", json!({})).tagged("k", "v");
    let blocked = AppendCondition::new(QueryItem::with_tags([P("k", "v")]).into(), None);
    let (conditional, plain) = tokio::join!(
        s.append_if(vec![event.clone()], blocked),
        s.append(vec![event.clone()]),
    );
    assert_eq!(plain.unwrap(), appended(2, 2, false));
    match conditional {
        // It ran first: its condition failed.
        Err(AppendError::ConditionFailed { after: None }) => {}
        // It ran second: a replay of the stored event.
        Ok(a) => assert_eq!(a, appended(2, 2, true)),
        other => panic!("unexpected outcome of the conditional copy: {other:?}"),
    }
    2
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: clones, separate stores and their group committers
// ---------------------------------------------------------------------------------------------

async fn pg() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await.expect("test database");
    let store = db.store().await.expect("store");
    (db, store)
}

#[tokio::test]
async fn two_clones_appending_the_same_events_at_once_store_them_once() {
    let (db, s) = pg().await;
    let clone = s.clone();
    let events = batch("Clone");
    let (one, two) = tokio::join!(s.append(events.clone()), clone.append(events.clone()));
    let a = assert_one_position(&[one, two], 1);
    assert_eq!((a.first, a.last), (Position::new(1), Position::new(3)));
    assert_tables_hold(&db, &s, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_tasks_on_clones_store_the_same_events_once() {
    let (db, s) = pg().await;
    let events = batch("Tasks");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            let events = events.clone();
            tokio::spawn(async move { s.append(events).await })
        })
        .collect();
    let outcomes: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.expect("task"))
        .collect();
    assert_one_position(&outcomes, 1);
    assert_eq!(stored_events(&s).await, events);
    assert_tables_hold(&db, &s, 3).await;
    // Fifty more, all replays.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            let events = events.clone();
            tokio::spawn(async move { s.append(events).await })
        })
        .collect();
    let outcomes: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.expect("task"))
        .collect();
    assert_eq!(assert_one_position(&outcomes, 0), appended(1, 3, true));
    assert_tables_hold(&db, &s, 3).await;
}

/// Separate stores have separate group committers, so their appends meet in concurrent
/// transactions (serialised by `dcb_append`'s lock) rather than in one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_stores_appending_the_same_events_at_once_store_them_once() {
    let db = TestDatabase::create().await.expect("test database");
    let mut stores = Vec::new();
    for _ in 0..5 {
        stores.push(db.store().await.expect("store"));
    }
    let events = batch("Apart");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = stores[i % stores.len()].clone();
            let events = events.clone();
            tokio::spawn(async move { s.append(events).await })
        })
        .collect();
    let outcomes: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.expect("task"))
        .collect();
    assert_eq!(assert_one_position(&outcomes, 1).first, Position::new(1));
    assert_tables_hold(&db, &stores[0], 3).await;
}

/// The same id with two contents at once: one is stored, the other is a duplicate of it. Through
/// one store (one batch, likely) and through two (two transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_id_with_two_contents_at_once_stores_one_of_them() {
    let db = TestDatabase::create().await.expect("test database");
    let s = db.store().await.expect("store");
    let other = db.store().await.expect("store");
    for (round, (x, y)) in [(&s, &s), (&s, &other)].into_iter().enumerate() {
        let id = Uuid::now_v7();
        let left = Event::new("Chosen", json!({"side": "left"})).with_id(id);
        let right = Event::new("Chosen", json!({"side": "right"})).with_id(id);
        let (l, r) = tokio::join!(x.append(vec![left.clone()]), y.append(vec![right.clone()]));
        let position = i64::try_from(round).unwrap() + 1;
        let stored = stored_events(&s).await;
        assert_eq!(stored.len(), round + 1);
        let winner = match (l, r) {
            (Ok(a), Err(AppendError::DuplicateEventId(d))) => {
                assert_eq!(d, id);
                assert_eq!(a, appended(position, position, false));
                left
            }
            (Err(AppendError::DuplicateEventId(d)), Ok(a)) => {
                assert_eq!(d, id);
                assert_eq!(a, appended(position, position, false));
                right
            }
            other => panic!("one must be stored, the other a duplicate: {other:?}"),
        };
        assert_eq!(stored[round], winner);
    }
    assert_tables_hold(&db, &s, 2).await;
}
