//! Input validation against the real PostgreSQL store and the in-memory reference model.
//!
//! Every rule is checked once, by a helper generic over the store, and run on both stores. A
//! refused append must answer the exact typed error and leave the store untouched; input exactly
//! at a limit must be accepted and read back unchanged. On PostgreSQL the tables are also counted
//! with plain SQL afterwards.

#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, Event, EventStore, Limits, MemoryStore, P, Position,
    PostgresStore, Query, QueryItem, ReadOptions, StoreError, Tag, ValidationError,
};
use serde_json::{Map, Value, json};
use stores::{all_events, assert_tables_hold, assert_tables_hold_on_postgres};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

// Each named check on a fresh PostgreSQL database and on a fresh `MemoryStore`. A check returns
// how many events it expects to be stored when it is done; on PostgreSQL that is verified with
// SQL on both tables.
on_both_stores!(
    #[tokio::test]
    |check, store, db| {
        let stored = check(&store).await;
        assert_tables_hold_on_postgres(db, &store, stored).await;
    };
    an_append_without_events_is_refused,
    an_empty_type_is_refused,
    a_type_longer_than_the_limit_is_refused_and_one_at_the_limit_accepted,
    an_empty_tag_key_is_refused,
    a_tag_key_with_a_colon_is_refused,
    a_tag_longer_than_the_limit_is_refused_and_one_at_the_limit_accepted,
    a_nul_in_the_type_is_refused,
    a_nul_in_a_tag_key_is_refused,
    a_nul_in_a_tag_value_is_refused,
    a_nul_in_a_payload_string_is_refused,
    a_nul_in_a_payload_object_key_is_refused,
    more_tags_than_the_limit_are_refused_and_exactly_the_limit_accepted,
    a_payload_larger_than_the_limit_is_refused_and_one_at_the_limit_accepted,
    a_payload_deeper_than_the_limit_is_refused_and_one_at_the_limit_accepted,
    more_events_than_the_limit_are_refused_and_exactly_the_limit_accepted,
    a_query_item_naming_nothing_is_refused_in_reads_and_conditions,
    a_query_without_items_is_refused_in_reads_and_conditions,
    invalid_types_and_tags_in_queries_are_refused,
    the_same_id_twice_in_one_append_is_refused,
    strings_full_of_sql_are_stored_verbatim,
);

/// The store holds exactly `n` events (and, when `n` is 0, no head either).
async fn assert_stored<S: EventStore>(s: &S, n: usize) {
    let read = s
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read all");
    assert_eq!(read.events.len(), n, "events stored: {:#?}", read.events);
    if n == 0 {
        assert_eq!(read.head, None, "an empty store has no head");
    }
}

/// The validation error of a refused append; panics on any other outcome.
fn refusal(outcome: Result<Appended, AppendError>) -> ValidationError {
    match outcome {
        Err(AppendError::Invalid(e)) => e,
        other => panic!("expected AppendError::Invalid(..), got {other:?}"),
    }
}

/// The validation error of a refused read; panics on any other outcome.
fn read_refusal<T: std::fmt::Debug>(outcome: Result<T, StoreError>) -> ValidationError {
    match outcome {
        Err(StoreError::Invalid(e)) => e,
        other => panic!("expected StoreError::Invalid(..), got {other:?}"),
    }
}

/// Both `append` and `append_if` refuse `events` with exactly `expected`, and the store is left
/// as it was.
async fn assert_refused<S: EventStore>(s: &S, events: Vec<Event>, expected: ValidationError) {
    let before = all_events(s).await;
    let err = refusal(s.append(events.clone()).await);
    assert_eq!(err, expected, "append");
    // A condition that would pass on an empty store: only validation can refuse this append.
    let condition = AppendCondition::new(QueryItem::of_types(["Never"]).into(), None);
    let err = refusal(s.append_if(events, condition).await);
    assert_eq!(err, expected, "append_if");
    assert_eq!(
        all_events(s).await,
        before,
        "a refused append must store nothing"
    );
}

/// `events` are accepted and read back exactly as sent, at the positions the store reported.
async fn assert_accepted<S: EventStore>(s: &S, events: Vec<Event>) {
    let before = all_events(s).await.len();
    let appended = s
        .append(events.clone())
        .await
        .unwrap_or_else(|e| panic!("append must be accepted: {e:?}"));
    assert!(!appended.replayed);
    let first = i64::try_from(before).unwrap() + 1;
    let last = first + i64::try_from(events.len()).unwrap() - 1;
    assert_eq!(
        (appended.first, appended.last),
        (Position::new(first), Position::new(last))
    );
    let stored = all_events(s).await;
    let stored: Vec<&Event> = stored[before..].iter().map(|e| &e.event).collect();
    let sent: Vec<&Event> = events.iter().collect();
    assert_eq!(stored, sent, "events must read back exactly as appended");
}

fn valid() -> Event {
    Event::new("Valid", json!({"ok": true})).tagged("k", "v")
}

fn tags(n: usize) -> impl Iterator<Item = Tag> {
    (0..n).map(|i| P(format!("tag{i}"), i.to_string()))
}

fn with_tags(event: Event, tags: impl IntoIterator<Item = Tag>) -> Event {
    tags.into_iter().fold(event, Event::with_tag)
}

/// `levels` arrays and objects nested in one another, around a number. (Built directly: `json!`
/// would serialize `inner` again at every level.)
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, i| {
        if i % 2 == 0 {
            Value::Array(vec![inner])
        } else {
            Value::Object(Map::from_iter([("k".to_owned(), inner)]))
        }
    })
}

fn serialized_len(v: &Value) -> usize {
    serde_json::to_string(v).unwrap().len()
}

// ---------------------------------------------------------------------------------------------
// One check per rule
// ---------------------------------------------------------------------------------------------

async fn an_append_without_events_is_refused<S: EventStore>(s: &S) -> usize {
    assert_refused(s, vec![], ValidationError::NoEvents).await;
    assert!(matches!(
        s.append(Vec::new()).await,
        Err(AppendError::Invalid(ValidationError::NoEvents))
    ));
    assert_stored(s, 0).await;
    0
}

async fn an_empty_type_is_refused<S: EventStore>(s: &S) -> usize {
    let bad = Event::new("", json!({}));
    assert!(matches!(
        s.append(vec![bad.clone()]).await,
        Err(AppendError::Invalid(ValidationError::EmptyType))
    ));
    assert_refused(s, vec![bad.clone()], ValidationError::EmptyType).await;
    // One bad event refuses the whole append: the valid one before it is not stored either.
    assert_refused(s, vec![valid(), bad], ValidationError::EmptyType).await;
    assert_stored(s, 0).await;
    0
}

async fn a_type_longer_than_the_limit_is_refused_and_one_at_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_type_bytes;
    assert_eq!(limit, 256, "the documented default");
    assert_refused(
        s,
        vec![Event::new("a".repeat(limit + 1), json!({}))],
        ValidationError::TypeTooLong {
            bytes: limit + 1,
            limit,
        },
    )
    .await;
    // The limit is in UTF-8 bytes, not characters: 129 two-byte characters are 258 bytes.
    let wide = "é".repeat(limit / 2 + 1);
    assert_eq!(wide.chars().count(), limit / 2 + 1);
    assert_refused(
        s,
        vec![valid(), Event::new(wide.clone(), json!({}))],
        ValidationError::TypeTooLong {
            bytes: wide.len(),
            limit,
        },
    )
    .await;
    assert_stored(s, 0).await;

    let at_limit = Event::new("a".repeat(limit), json!({})).tagged("k", "1");
    let at_limit_wide = Event::new("é".repeat(limit / 2), json!({})).tagged("k", "2");
    assert_eq!(at_limit_wide.event_type().len(), limit);
    assert_accepted(s, vec![at_limit.clone(), at_limit_wide]).await;
    // And the long type can be queried.
    let read = s
        .read(
            &QueryItem::of_types([at_limit.event_type()]).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert_eq!(read.events[0].event, at_limit);
    2
}

async fn an_empty_tag_key_is_refused<S: EventStore>(s: &S) -> usize {
    let bad = Event::new("T", json!({})).with_tag(Tag::new("", "v"));
    assert!(matches!(
        s.append(vec![bad.clone()]).await,
        Err(AppendError::Invalid(ValidationError::EmptyTagKey(ref t))) if t == ":v"
    ));
    assert_refused(
        s,
        vec![bad.clone()],
        ValidationError::EmptyTagKey(":v".into()),
    )
    .await;
    assert_refused(
        s,
        vec![valid(), bad],
        ValidationError::EmptyTagKey(":v".into()),
    )
    .await;
    // An empty value is not an empty key.
    let empty_value = Event::new("T", json!({})).with_tag(Tag::new("k", ""));
    assert_stored(s, 0).await;
    assert_accepted(s, vec![empty_value]).await;
    1
}

async fn a_tag_key_with_a_colon_is_refused<S: EventStore>(s: &S) -> usize {
    let bad = Event::new("T", json!({})).with_tag(Tag::new("a:b", "v"));
    assert!(matches!(
        s.append(vec![bad.clone()]).await,
        Err(AppendError::Invalid(ValidationError::TagKeyHasColon(ref k))) if k == "a:b"
    ));
    assert_refused(
        s,
        vec![bad.clone()],
        ValidationError::TagKeyHasColon("a:b".into()),
    )
    .await;
    assert_refused(
        s,
        vec![valid(), bad],
        ValidationError::TagKeyHasColon("a:b".into()),
    )
    .await;
    assert_stored(s, 0).await;
    // A colon in the value is fine, and reads back whole.
    let colon_value = Event::new("T", json!({})).with_tag(Tag::new("url", "https://h:1/a:b"));
    assert_accepted(s, vec![colon_value.clone()]).await;
    let read = s
        .read(
            &QueryItem::with_tags([P("url", "https://h:1/a:b")]).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert_eq!(read.events[0].event, colon_value);
    1
}

async fn a_tag_longer_than_the_limit_is_refused_and_one_at_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_tag_bytes;
    // `k:` plus the value: the limit counts the whole `key:value`.
    let too_long = Tag::new("k", "v".repeat(limit - 1));
    assert_refused(
        s,
        vec![valid(), Event::new("T", json!({})).with_tag(too_long)],
        ValidationError::TagTooLong {
            bytes: limit + 1,
            limit,
        },
    )
    .await;
    assert_stored(s, 0).await;
    let at_limit = Tag::new("k", "v".repeat(limit - 2));
    assert_eq!(at_limit.to_string().len(), limit);
    assert_accepted(
        s,
        vec![Event::new("T", json!({})).with_tag(at_limit.clone())],
    )
    .await;
    let read = s
        .read(
            &QueryItem::with_tags([at_limit]).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    1
}

async fn a_nul_in_the_type_is_refused<S: EventStore>(s: &S) -> usize {
    for t in ["A\0B", "\0", "A\0"] {
        let bad = Event::new(t, json!({}));
        assert!(matches!(
            s.append(vec![bad.clone()]).await,
            Err(AppendError::Invalid(ValidationError::NulByte {
                field: "event type"
            }))
        ));
        assert_refused(
            s,
            vec![valid(), bad],
            ValidationError::NulByte {
                field: "event type",
            },
        )
        .await;
    }
    assert_stored(s, 0).await;
    0
}

async fn a_nul_in_a_tag_key_is_refused<S: EventStore>(s: &S) -> usize {
    for key in ["k\0", "\0", "a\0b"] {
        let bad = Event::new("T", json!({})).with_tag(Tag::new(key, "v"));
        assert!(matches!(
            s.append(vec![bad.clone()]).await,
            Err(AppendError::Invalid(ValidationError::NulByte {
                field: "tag"
            }))
        ));
        assert_refused(
            s,
            vec![valid(), bad],
            ValidationError::NulByte { field: "tag" },
        )
        .await;
    }
    assert_stored(s, 0).await;
    0
}

async fn a_nul_in_a_tag_value_is_refused<S: EventStore>(s: &S) -> usize {
    for value in ["v\0", "\0", "a\0b"] {
        let bad = Event::new("T", json!({}))
            .tagged("fine", "1")
            .with_tag(Tag::new("k", value));
        assert!(matches!(
            s.append(vec![bad.clone()]).await,
            Err(AppendError::Invalid(ValidationError::NulByte {
                field: "tag"
            }))
        ));
        assert_refused(
            s,
            vec![valid(), bad],
            ValidationError::NulByte { field: "tag" },
        )
        .await;
    }
    assert_stored(s, 0).await;
    0
}

async fn a_nul_in_a_payload_string_is_refused<S: EventStore>(s: &S) -> usize {
    let payloads = [
        json!("a\0b"),
        json!({"s": "\0"}),
        json!({"a": [1, {"b": ["fine", "x\0"]}]}),
        json!([[[["deep\0"]]]]),
    ];
    for payload in payloads {
        let bad = Event::new("T", payload.clone());
        assert!(
            matches!(
                s.append(vec![bad.clone()]).await,
                Err(AppendError::Invalid(ValidationError::NulByte {
                    field: "payload"
                }))
            ),
            "payload {payload}"
        );
        assert_refused(
            s,
            vec![valid(), bad],
            ValidationError::NulByte { field: "payload" },
        )
        .await;
    }
    assert_stored(s, 0).await;
    0
}

async fn a_nul_in_a_payload_object_key_is_refused<S: EventStore>(s: &S) -> usize {
    let payloads = [
        json!({"k\0": 1}),
        json!({"\0": null}),
        json!({"a": {"b": [{"c\0d": "v"}]}}),
    ];
    for payload in payloads {
        let bad = Event::new("T", payload.clone());
        assert!(
            matches!(
                s.append(vec![bad.clone()]).await,
                Err(AppendError::Invalid(ValidationError::NulByte {
                    field: "payload"
                }))
            ),
            "payload {payload}"
        );
        assert_refused(
            s,
            vec![valid(), bad],
            ValidationError::NulByte { field: "payload" },
        )
        .await;
    }
    assert_stored(s, 0).await;
    0
}

async fn more_tags_than_the_limit_are_refused_and_exactly_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_tags_per_event;
    assert_eq!(limit, 64, "the documented default");
    let over = with_tags(Event::new("T", json!({})), tags(limit + 1));
    assert_eq!(over.tags().len(), limit + 1);
    assert!(matches!(
        s.append(vec![over.clone()]).await,
        Err(AppendError::Invalid(ValidationError::TooManyTags { count, limit: l }))
            if count == limit + 1 && l == limit
    ));
    assert_refused(
        s,
        vec![valid(), over],
        ValidationError::TooManyTags {
            count: limit + 1,
            limit,
        },
    )
    .await;
    assert_stored(s, 0).await;

    let at_limit = with_tags(Event::new("T", json!({})), tags(limit));
    assert_eq!(at_limit.tags().len(), limit);
    assert_accepted(s, vec![at_limit.clone()]).await;
    // Every one of its tags finds it, and so do all of them together.
    for tag in at_limit.tags() {
        let read = s
            .read(
                &QueryItem::with_tags([tag.clone()]).into(),
                ReadOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(read.events.len(), 1, "tag {tag}");
    }
    let read = s
        .read(
            &QueryItem::with_tags(at_limit.tags().to_vec()).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    1
}

async fn a_payload_larger_than_the_limit_is_refused_and_one_at_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_payload_bytes;
    assert_eq!(limit, 1024 * 1024, "the documented default");

    // A JSON string serializes as its characters between two quotes.
    let at_limit = json!("a".repeat(limit - 2));
    assert_eq!(serialized_len(&at_limit), limit);
    let over = json!("a".repeat(limit - 1));
    assert_eq!(serialized_len(&over), limit + 1);
    assert_refused(
        s,
        vec![valid(), Event::new("T", over)],
        ValidationError::PayloadTooLarge {
            bytes: limit + 1,
            limit,
        },
    )
    .await;

    // The size is that of the serialized JSON: each `"` is escaped to two bytes, so half as many
    // quotes reach the limit; one more is over it.
    let quotes_at_limit = json!("\"".repeat((limit - 2) / 2));
    assert_eq!(serialized_len(&quotes_at_limit), limit);
    let quotes_over = json!("\"".repeat((limit - 2) / 2 + 1));
    assert_refused(
        s,
        vec![Event::new("T", quotes_over)],
        ValidationError::PayloadTooLarge {
            bytes: limit + 2,
            limit,
        },
    )
    .await;
    // An object is measured whole, keys and punctuation included.
    let object_over = json!({ "k": "a".repeat(limit - 7) });
    assert_eq!(serialized_len(&object_over), limit + 1);
    assert_refused(
        s,
        vec![Event::new("T", object_over)],
        ValidationError::PayloadTooLarge {
            bytes: limit + 1,
            limit,
        },
    )
    .await;
    assert_stored(s, 0).await;

    let object_at_limit = json!({ "k": "a".repeat(limit - 8) });
    assert_eq!(serialized_len(&object_at_limit), limit);
    assert_accepted(s, vec![Event::new("T", at_limit)]).await;
    assert_accepted(s, vec![Event::new("T", quotes_at_limit)]).await;
    assert_accepted(s, vec![Event::new("T", object_at_limit)]).await;
    3
}

async fn a_payload_deeper_than_the_limit_is_refused_and_one_at_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_payload_depth;
    assert_eq!(limit, 64, "the documented default");
    for payload in [nested(limit + 1), nested(limit + 2), nested(1_000)] {
        assert_refused(
            s,
            vec![valid(), Event::new("T", payload)],
            ValidationError::PayloadTooDeep { limit },
        )
        .await;
    }
    // Depth counts containers, empty ones too: 64 levels around an empty array is 65.
    let mut around_empty = json!([]);
    for _ in 0..limit {
        around_empty = Value::Array(vec![around_empty]);
    }
    assert_refused(
        s,
        vec![Event::new("T", around_empty)],
        ValidationError::PayloadTooDeep { limit },
    )
    .await;
    assert_stored(s, 0).await;
    assert_accepted(s, vec![Event::new("T", nested(limit))]).await;
    1
}

async fn more_events_than_the_limit_are_refused_and_exactly_the_limit_accepted<S: EventStore>(
    s: &S,
) -> usize {
    let limit = Limits::default().max_events_per_append;
    assert_eq!(limit, 10_000, "the documented default");
    let events = |n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| Event::new("Many", json!({ "i": i })).tagged("batch", "b"))
            .collect()
    };
    let over = events(limit + 1);
    assert!(matches!(
        s.append(over.clone()).await,
        Err(AppendError::Invalid(ValidationError::TooManyEvents { count, limit: l }))
            if count == limit + 1 && l == limit
    ));
    assert_refused(
        s,
        over,
        ValidationError::TooManyEvents {
            count: limit + 1,
            limit,
        },
    )
    .await;
    assert_stored(s, 0).await;
    assert_accepted(s, events(limit)).await;
    limit
}

async fn a_query_item_naming_nothing_is_refused_in_reads_and_conditions<S: EventStore>(
    s: &S,
) -> usize {
    let empty_item = Query::from_items([QueryItem::default()]);
    let among_others = Query::from(QueryItem::of_types(["A"]))
        .or(QueryItem::new(Vec::<String>::new(), []))
        .or(QueryItem::with_tags([P("k", "v")]));
    for query in [empty_item, among_others] {
        assert_eq!(
            read_refusal(s.read(&query, ReadOptions::default()).await),
            ValidationError::EmptyQueryItem,
            "read {query:?}"
        );
        // The store is empty, so if the item were taken for "everything" (as `dcb_append` takes
        // an item naming nothing) the condition would pass and the event be stored.
        let outcome = s
            .append_if(vec![valid()], AppendCondition::new(query.clone(), None))
            .await;
        assert!(
            matches!(
                outcome,
                Err(AppendError::Invalid(ValidationError::EmptyQueryItem))
            ),
            "append_if {query:?}: {outcome:?}"
        );
        assert_stored(s, 0).await;
    }
    0
}

async fn a_query_without_items_is_refused_in_reads_and_conditions<S: EventStore>(s: &S) -> usize {
    let query = Query::from_items([]);
    assert!(!query.is_all());
    assert!(matches!(
        s.read(&query, ReadOptions::default()).await,
        Err(StoreError::Invalid(ValidationError::EmptyQuery))
    ));
    let outcome = s
        .append_if(vec![valid()], AppendCondition::new(query.clone(), None))
        .await;
    assert!(
        matches!(
            outcome,
            Err(AppendError::Invalid(ValidationError::EmptyQuery))
        ),
        "append_if: {outcome:?}"
    );
    let outcome = s
        .append_if(
            vec![valid()],
            AppendCondition::new(query, Some(Position::new(0))),
        )
        .await;
    assert!(
        matches!(
            outcome,
            Err(AppendError::Invalid(ValidationError::EmptyQuery))
        ),
        "append_if after 0: {outcome:?}"
    );
    assert_stored(s, 0).await;
    0
}

async fn invalid_types_and_tags_in_queries_are_refused<S: EventStore>(s: &S) -> usize {
    let limit = Limits::default().max_type_bytes;
    let cases: Vec<(QueryItem, ValidationError)> = vec![
        (QueryItem::of_types([""]), ValidationError::EmptyType),
        (
            QueryItem::of_types(["a".repeat(limit + 1)]),
            ValidationError::TypeTooLong {
                bytes: limit + 1,
                limit,
            },
        ),
        (
            QueryItem::of_types(["A\0"]),
            ValidationError::NulByte {
                field: "event type",
            },
        ),
        (
            QueryItem::with_tags([Tag::new("", "v")]),
            ValidationError::EmptyTagKey(":v".into()),
        ),
        (
            QueryItem::with_tags([Tag::new("a:b", "v")]),
            ValidationError::TagKeyHasColon("a:b".into()),
        ),
        (
            QueryItem::new(["A"], [P("k", "v\0")]),
            ValidationError::NulByte { field: "tag" },
        ),
    ];
    for (item, expected) in cases {
        let query = Query::from(QueryItem::of_types(["Fine"])).or(item);
        assert_eq!(
            read_refusal(s.read(&query, ReadOptions::default()).await),
            expected,
            "read {query:?}"
        );
        let err = refusal(
            s.append_if(vec![valid()], AppendCondition::new(query.clone(), None))
                .await,
        );
        assert_eq!(err, expected, "append_if {query:?}");
    }
    assert_stored(s, 0).await;
    0
}

async fn the_same_id_twice_in_one_append_is_refused<S: EventStore>(s: &S) -> usize {
    let id = Uuid::now_v7();
    let a = Event::new("A", json!({"n": 1})).with_id(id);
    let b = Event::new("B", json!({"n": 2})).with_id(id);
    // Identical copies and different events under one id alike.
    assert_refused(
        s,
        vec![a.clone(), a.clone()],
        ValidationError::DuplicateIdInAppend(id),
    )
    .await;
    assert_refused(
        s,
        vec![a.clone(), b.clone()],
        ValidationError::DuplicateIdInAppend(id),
    )
    .await;
    assert_refused(
        s,
        vec![valid(), a.clone(), valid(), b],
        ValidationError::DuplicateIdInAppend(id),
    )
    .await;
    assert!(matches!(
        s.append(vec![a.clone(), valid(), a]).await,
        Err(AppendError::Invalid(ValidationError::DuplicateIdInAppend(d))) if d == id
    ));
    assert_stored(s, 0).await;
    0
}

// ---------------------------------------------------------------------------------------------
// Strings that would break a query built by concatenation
// ---------------------------------------------------------------------------------------------

const NASTY: &[&str] = &[
    "'",
    "''",
    "\"",
    "'); DROP TABLE events; --",
    "\"); DROP TABLE event_tags; --",
    "Robert'); DELETE FROM events WHERE ('1'='1",
    "; SELECT pg_sleep(10); --",
    "a;b;c;",
    "1 OR 1=1",
    "' OR ''='",
    "--",
    "/* comment */",
    "\\",
    "\\\\",
    "\\'",
    "\\x00",
    "\\u0000",
    "E'\\n'",
    "$1",
    "$2::text",
    "$$",
    "$fn$ END $fn$",
    "%s %d %%",
    "?",
    "{}",
    "{a,b}",
    "{\"x\",NULL}",
    "NULL",
    "null",
    "[1,2]",
    "  ",
    " padded ",
    "tab\tnew\nline\rreturn",
    "🦀",
    "👩\u{200d}👩\u{200d}👧\u{200d}👦",
    "🇺🇳",
    "مرحبا بالعالم",
    "שלום עולם",
    "\u{202e}reversed\u{202c}",
    "e\u{301}",
    "\u{e9}",
    "a\u{300}\u{301}\u{302}\u{303}",
    "\u{feff}bom",
    "zero\u{200b}width",
    "𝕏𝕐ℤ",
    "漢字かなカナ",
    "k:v:w",
];

/// A tag key made from `s`: keys may hold anything but `:` (and NUL).
fn key_of(s: &str) -> String {
    let key = s.replace(':', "_");
    if key.is_empty() { "_".into() } else { key }
}

fn nasty_event(i: usize, s: &str) -> Event {
    Event::new(
        s,
        json!({
            "value": s,
            s: i,
            "nested": {"list": [s, {s: s}]},
        }),
    )
    .tagged("v", s)
    .tagged(key_of(s), s)
}

async fn strings_full_of_sql_are_stored_verbatim<S: EventStore>(s: &S) -> usize {
    // Every string is distinct, so each type and each tag names exactly one event.
    for (i, a) in NASTY.iter().enumerate() {
        assert!(!NASTY[i + 1..].contains(a), "duplicate test string {a:?}");
    }
    let events: Vec<Event> = NASTY
        .iter()
        .enumerate()
        .map(|(i, s)| nasty_event(i, s))
        .collect();
    // In one append, and one by one (through the single-event path).
    let half = events.len() / 2;
    let appended = s.append(events[..half].to_vec()).await.expect("append");
    assert_eq!(appended.first, Position::new(1));
    for event in &events[half..] {
        s.append(vec![event.clone()]).await.expect("append one");
    }

    let stored = all_events(s).await;
    assert_eq!(stored.len(), events.len());
    for (stored, sent) in stored.iter().zip(&events) {
        assert_eq!(&stored.event, sent, "round trip of {:?}", sent.event_type());
    }

    for (i, (text, event)) in NASTY.iter().zip(&events).enumerate() {
        let position = Position::new(i64::try_from(i).unwrap() + 1);
        let queries = [
            Query::from(QueryItem::with_tags([P("v", *text)])),
            Query::from(QueryItem::with_tags([P(key_of(text), *text)])),
            Query::from(QueryItem::with_tags([
                P("v", *text),
                P(key_of(text), *text),
            ])),
            Query::from(QueryItem::of_types([*text])),
            Query::from(QueryItem::new([*text], [P("v", *text)])),
            Query::matching()
                .any_event_type_of([*text, "Other"])
                .and_any_predicate_of([P("v", *text), P("v", "no such value")])
                .finalize()
                .expect("valid query"),
        ];
        for query in &queries {
            let read = s.read(query, ReadOptions::default()).await.expect("read");
            let found: Vec<(Position, &Event)> =
                read.events.iter().map(|e| (e.position, &e.event)).collect();
            assert_eq!(found, [(position, event)], "query {query:?}");
            // The same boundary in a condition: it holds after the event, fails before it.
            s.append_if(
                vec![Event::new("Probe", json!({}))],
                AppendCondition::new(query.clone(), read.head),
            )
            .await
            .unwrap_or_else(|e| panic!("condition {query:?} after the head: {e:?}"));
            let outcome = s
                .append_if(
                    vec![Event::new("Probe", json!({}))],
                    AppendCondition::new(query.clone(), Some(Position::new(position.get() - 1))),
                )
                .await;
            assert!(
                matches!(outcome, Err(AppendError::ConditionFailed { .. })),
                "condition {query:?} before the event: {outcome:?}"
            );
        }
    }
    let probes = s
        .read(
            &QueryItem::of_types(["Probe"]).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events
        .len();
    assert_eq!(probes, NASTY.len() * 6);
    NASTY.len() + probes
}

/// On PostgreSQL the strings are in the columns as sent, not merely decoded back to themselves.
#[tokio::test]
async fn strings_full_of_sql_are_in_the_columns_as_sent() {
    let db = TestDatabase::create().await.expect("test database");
    let s = db.store().await.expect("store");
    let events: Vec<Event> = NASTY
        .iter()
        .enumerate()
        .map(|(i, s)| nasty_event(i, s))
        .collect();
    s.append(events.clone()).await.expect("append");
    let client = db.client().await.expect("client");
    let rows = client
        .query(
            "SELECT id, type, tags, payload->>'value' FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("select");
    assert_eq!(rows.len(), NASTY.len());
    for ((row, text), event) in rows.iter().zip(NASTY).zip(&events) {
        assert_eq!(row.get::<_, Uuid>(0), event.id());
        assert_eq!(row.get::<_, String>(1), *text);
        let tags: Vec<String> = row.get(2);
        let expected: Vec<String> = event.tags().iter().map(ToString::to_string).collect();
        assert_eq!(tags, expected);
        assert_eq!(row.get::<_, String>(3), *text);
    }
    // Still two tables, with every row where it belongs.
    let tag_rows: i64 = client
        .query_one("SELECT count(*) FROM event_tags", &[])
        .await
        .unwrap()
        .get(0);
    let expected: usize = events.iter().map(|e| e.tags().len()).sum();
    assert_eq!(tag_rows, i64::try_from(expected).unwrap());
    let by_tag: i64 = client
        .query_one(
            "SELECT count(*) FROM event_tags WHERE tag = $1",
            &[&"v:'); DROP TABLE events; --"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by_tag, 1);
}

// ---------------------------------------------------------------------------------------------
// Custom limits
// ---------------------------------------------------------------------------------------------

fn small_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_type_bytes = 8;
    limits.max_tag_bytes = 12;
    limits.max_tags_per_event = 2;
    limits.max_payload_bytes = 64;
    limits.max_payload_depth = 3;
    limits.max_events_per_append = 3;
    limits
}

/// Each limit of `small_limits()` is enforced, and input exactly at it accepted.
async fn small_limits_are_honoured<S: EventStore>(s: &S) -> usize {
    let l = small_limits();
    let ev = || Event::new("T", json!({}));
    // Over each limit, though well within the defaults.
    assert_refused(
        s,
        vec![Event::new("a".repeat(9), json!({}))],
        ValidationError::TypeTooLong { bytes: 9, limit: 8 },
    )
    .await;
    assert_refused(
        s,
        vec![ev().with_tag(Tag::new("key", "1234567890"))],
        ValidationError::TagTooLong {
            bytes: 14,
            limit: 12,
        },
    )
    .await;
    assert_refused(
        s,
        vec![with_tags(ev(), tags(3))],
        ValidationError::TooManyTags { count: 3, limit: 2 },
    )
    .await;
    assert_refused(
        s,
        vec![Event::new("T", json!("a".repeat(63)))],
        ValidationError::PayloadTooLarge {
            bytes: 65,
            limit: 64,
        },
    )
    .await;
    assert_refused(
        s,
        vec![Event::new("T", nested(4))],
        ValidationError::PayloadTooDeep { limit: 3 },
    )
    .await;
    assert_refused(
        s,
        vec![ev(), ev(), ev(), ev()],
        ValidationError::TooManyEvents { count: 4, limit: 3 },
    )
    .await;
    // Queries are held to the store's limits too.
    let long_type = Query::from(QueryItem::of_types(["a".repeat(9)]));
    assert_eq!(
        read_refusal(s.read(&long_type, ReadOptions::default()).await),
        ValidationError::TypeTooLong { bytes: 9, limit: 8 }
    );
    let long_tag = Query::from(QueryItem::with_tags([Tag::new("key", "1234567890")]));
    assert_eq!(
        refusal(
            s.append_if(vec![ev()], AppendCondition::new(long_tag, None))
                .await
        ),
        ValidationError::TagTooLong {
            bytes: 14,
            limit: 12
        }
    );
    assert_stored(s, 0).await;

    // Exactly at each limit.
    let at_limits = Event::new("a".repeat(l.max_type_bytes), json!("a".repeat(62)))
        .with_tag(Tag::new("key", "12345678"))
        .tagged("k", "2");
    assert_eq!(at_limits.tags()[0].to_string().len(), l.max_tag_bytes);
    assert_eq!(serialized_len(at_limits.payload()), l.max_payload_bytes);
    assert_accepted(s, vec![at_limits, Event::new("T", nested(3)), ev()]).await;
    let read = s
        .read(
            &QueryItem::new(["a".repeat(8)], [Tag::new("key", "12345678")]).into(),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    3
}

/// Limits above the defaults let through what the defaults refuse.
async fn raised_limits_are_honoured<S: EventStore>(s: &S) -> usize {
    let defaults = Limits::default();
    let long_type = Event::new("a".repeat(defaults.max_type_bytes + 44), json!({}));
    let many_tags = with_tags(
        Event::new("T", json!({})),
        tags(defaults.max_tags_per_event + 6),
    );
    let deep = Event::new("T", nested(defaults.max_payload_depth + 6));
    assert_accepted(s, vec![long_type, many_tags, deep]).await;
    3
}

fn raised_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_type_bytes = 300;
    limits.max_tags_per_event = 70;
    limits.max_payload_depth = 70;
    limits
}

#[tokio::test]
async fn custom_limits_given_to_the_builder_are_honoured_postgres() {
    let db = TestDatabase::create().await.expect("test database");
    let s = PostgresStore::builder(db.url())
        .limits(small_limits())
        .connect()
        .await
        .expect("store");
    assert_eq!(*s.limits(), small_limits());
    let stored = small_limits_are_honoured(&s).await;
    assert_tables_hold(&db, &s, stored).await;
}

#[tokio::test]
async fn custom_limits_given_to_the_builder_are_honoured_memory() {
    small_limits_are_honoured(&MemoryStore::with_limits(small_limits())).await;
}

#[tokio::test]
async fn raised_limits_given_to_the_builder_are_honoured_postgres() {
    let db = TestDatabase::create().await.expect("test database");
    // The default store on the same database refuses what the raised one accepts.
    let default_store = db.store().await.expect("store");
    assert_eq!(*default_store.limits(), Limits::default());
    assert_refused(
        &default_store,
        vec![Event::new("a".repeat(300), json!({}))],
        ValidationError::TypeTooLong {
            bytes: 300,
            limit: 256,
        },
    )
    .await;
    let s = PostgresStore::builder(db.url())
        .limits(raised_limits())
        .connect()
        .await
        .expect("store");
    let stored = raised_limits_are_honoured(&s).await;
    assert_tables_hold(&db, &s, stored).await;
}

#[tokio::test]
async fn raised_limits_given_to_the_builder_are_honoured_memory() {
    raised_limits_are_honoured(&MemoryStore::with_limits(raised_limits())).await;
}

/// Whatever a store accepts it must read back. PostgreSQL hands payloads to `serde_json`, which
/// stops at 128 levels of nesting, so a depth limit raised past that must either refuse deeper
/// payloads or still read them.
async fn a_payload_accepted_under_a_raised_depth_limit_reads_back<S: EventStore>(s: &S) {
    let event = Event::new("Deep", nested(150));
    match s.append(vec![event.clone()]).await {
        Ok(_) => {
            let read = s
                .read(&Query::all(), ReadOptions::default())
                .await
                .unwrap_or_else(|e| panic!("an accepted payload must read back, got {e:?}"));
            assert_eq!(read.events.len(), 1);
            assert_eq!(read.events[0].event, event);
        }
        Err(AppendError::Invalid(ValidationError::PayloadTooDeep { .. })) => {
            assert_stored(s, 0).await;
        }
        other => panic!("expected the payload stored or refused as too deep, got {other:?}"),
    }
}

fn deep_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_payload_depth = 200;
    limits
}

#[tokio::test]
async fn a_payload_accepted_under_a_raised_depth_limit_reads_back_postgres() {
    let db = TestDatabase::create().await.expect("test database");
    let s = PostgresStore::builder(db.url())
        .limits(deep_limits())
        .connect()
        .await
        .expect("store");
    a_payload_accepted_under_a_raised_depth_limit_reads_back(&s).await;
}

#[tokio::test]
async fn a_payload_accepted_under_a_raised_depth_limit_reads_back_memory() {
    a_payload_accepted_under_a_raised_depth_limit_reads_back(&MemoryStore::with_limits(
        deep_limits(),
    ))
    .await;
}
