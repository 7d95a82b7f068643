//! A model-based test: random sequences of appends, conditional appends, reads, re-sent appends
//! and batches of concurrent appends run against the real PostgreSQL store and the in-memory
//! reference model (`MemoryStore`), which must give identical answers (for a batch, those of the
//! model applying it in some order) and hold the same events at the end.

#[path = "support/stores.rs"]
mod stores;

use std::time::Duration;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, Event, EventStore, MemoryStore, P, Position,
    PostgresStore, Query, QueryItem, ReadOptions, ReadResult, StoreError, ValidationError,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use serde_json::{Value, json};
use stores::strip;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// What the property test generates: a small alphabet, so that conditions and reads collide.
// ---------------------------------------------------------------------------------------------

const TYPES: [&str; 3] = ["A", "B", "C"];
const KEYS: [&str; 2] = ["k", "j"];
const VALUES: [&str; 3] = ["1", "2", "3"];

/// A tag as (key index, value index).
type TagSpec = (usize, usize);

#[derive(Debug, Clone)]
struct EventSpec {
    ty: usize,
    tags: Vec<TagSpec>,
    payload: Value,
}

#[derive(Debug, Clone)]
struct ItemSpec {
    types: Vec<usize>,
    tags: Vec<TagSpec>,
}

#[derive(Debug, Clone)]
enum QuerySpec {
    All,
    Items(Vec<ItemSpec>),
}

/// Positions are drawn at run time from 0..=head+1 of the store at that moment.
#[derive(Debug, Clone)]
struct ReadSpec {
    after: Option<Index>,
    up_to: Option<Index>,
    limit: Option<usize>,
    backwards: bool,
}

/// How an earlier append request is sent again (always with its original condition, if any).
#[derive(Debug, Clone)]
enum Resend {
    /// The very same events.
    Exact,
    /// A contiguous run of its events (a replay of part of an append).
    Slice(Index, Index),
    /// The same events, one of them with another payload.
    ChangedPayload(Index),
    /// The same events plus one with a fresh id.
    WithFreshEvent,
    /// The same events in reverse order.
    Reversed,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<EventSpec>),
    AppendIf(Vec<EventSpec>, QuerySpec, Option<Index>),
    Read(QuerySpec, ReadSpec),
    /// Re-sends the earlier append request picked by the index (a no-op before any append).
    Resend(Index, Resend),
    /// Appends sent concurrently, so that the PostgreSQL store's group committer gets them all
    /// at once; the model must reach the same outcomes applying them in some order.
    Batch(Vec<BatchItem>),
}

#[derive(Debug, Clone)]
enum BatchItem {
    Append(Vec<EventSpec>),
    AppendIf(Vec<EventSpec>, QuerySpec, Option<Index>),
    /// The exact events and condition of an earlier request, possibly one of this batch.
    Resend(Index),
}

fn tag_spec() -> impl Strategy<Value = TagSpec> {
    (0..KEYS.len(), 0..VALUES.len())
}

fn payload() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-3i64..=3).prop_map(Value::from),
        "[a-z0-9 é\"\\\\]{0,4}".prop_map(Value::from),
    ];
    btree_map("[a-c]", scalar, 0..3).prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (0..TYPES.len(), vec(tag_spec(), 0..=3), payload()).prop_map(|(ty, tags, payload)| EventSpec {
        ty,
        tags,
        payload,
    })
}

fn events() -> impl Strategy<Value = Vec<EventSpec>> {
    vec(event_spec(), 1..=3)
}

fn item_spec() -> impl Strategy<Value = ItemSpec> {
    (
        subsequence(vec![0, 1, 2], 0..=TYPES.len()),
        vec(tag_spec(), 0..=2),
    )
        .prop_filter("an item names at least one type or tag", |(types, tags)| {
            !types.is_empty() || !tags.is_empty()
        })
        .prop_map(|(types, tags)| ItemSpec { types, tags })
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    prop_oneof![
        1 => Just(QuerySpec::All),
        5 => vec(item_spec(), 1..=3).prop_map(QuerySpec::Items),
    ]
}

fn read_spec() -> impl Strategy<Value = ReadSpec> {
    (
        proptest::option::of(any::<Index>()),
        proptest::option::weighted(0.3, any::<Index>()),
        proptest::option::of(0usize..5),
        any::<bool>(),
    )
        .prop_map(|(after, up_to, limit, backwards)| ReadSpec {
            after,
            up_to,
            limit,
            backwards,
        })
}

fn resend() -> impl Strategy<Value = Resend> {
    prop_oneof![
        4 => Just(Resend::Exact),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Resend::Slice(a, b)),
        1 => any::<Index>().prop_map(Resend::ChangedPayload),
        1 => Just(Resend::WithFreshEvent),
        1 => Just(Resend::Reversed),
    ]
}

fn condition_after() -> impl Strategy<Value = Option<Index>> {
    proptest::option::weighted(0.8, any::<Index>())
}

fn batch_item() -> impl Strategy<Value = BatchItem> {
    prop_oneof![
        2 => events().prop_map(BatchItem::Append),
        3 => (events(), query_spec(), condition_after())
            .prop_map(|(e, q, after)| BatchItem::AppendIf(e, q, after)),
        1 => any::<Index>().prop_map(BatchItem::Resend),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => events().prop_map(Op::Append),
        4 => (events(), query_spec(), condition_after())
            .prop_map(|(e, q, after)| Op::AppendIf(e, q, after)),
        4 => (query_spec(), read_spec()).prop_map(|(q, r)| Op::Read(q, r)),
        2 => (any::<Index>(), resend()).prop_map(|(i, r)| Op::Resend(i, r)),
        1 => vec(batch_item(), 2..=4).prop_map(Op::Batch),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running the operations.
// ---------------------------------------------------------------------------------------------

fn tag(&(k, v): &TagSpec) -> dcb_runtime::Tag {
    P(KEYS[k], VALUES[v])
}

fn query(spec: &QuerySpec) -> Query {
    match spec {
        QuerySpec::All => Query::all(),
        QuerySpec::Items(items) => Query::from_items(
            items
                .iter()
                .map(|i| QueryItem::new(i.types.iter().map(|&t| TYPES[t]), i.tags.iter().map(tag))),
        ),
    }
}

/// A position in 0..=head+1.
fn position(index: &Index, head: i64) -> Position {
    let n = usize::try_from(head + 2).expect("small head");
    Position::new(i64::try_from(index.index(n)).expect("small position"))
}

/// An append's outcome, comparable across stores (whether it says when it stored, not when: that
/// is a time of the run).
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Appended(Appended),
    ConditionFailed(Option<Position>),
    DuplicateEventId(Uuid),
    Invalid(ValidationError),
    Other(String),
}

fn outcome(result: Result<Appended, AppendError>) -> Outcome {
    match result {
        Ok(a) => Outcome::Appended(Appended {
            recorded_at: a.recorded_at.map(|_| std::time::SystemTime::UNIX_EPOCH),
            ..a
        }),
        Err(AppendError::ConditionFailed { after }) => Outcome::ConditionFailed(after),
        Err(AppendError::DuplicateEventId(id)) => Outcome::DuplicateEventId(id),
        Err(AppendError::Invalid(v)) => Outcome::Invalid(v),
        Err(e) => Outcome::Other(format!("{e:?}")),
    }
}

/// A read's answer, comparable across stores: the events without `recorded_at`, and the head.
type Answer = (Vec<(Position, Event)>, Option<Position>);

fn answer(result: Result<ReadResult, StoreError>) -> Result<Answer, String> {
    result
        .map(|r| (strip(&r.events), r.head))
        .map_err(|e| format!("{e:?}"))
}

async fn append_to<S: EventStore>(
    store: &S,
    events: Vec<Event>,
    condition: Option<AppendCondition>,
) -> Outcome {
    outcome(match condition {
        None => store.append(events).await,
        Some(c) => store.append_if(events, c).await,
    })
}

/// Events, condition, and the earlier request it re-sends, if it does.
type Request = (Vec<Event>, Option<AppendCondition>, Option<usize>);

/// Longest wait for the answers to concurrent appends; they take milliseconds.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Every order of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in permutations(n - 1) {
        for at in 0..=shorter.len() {
            let mut order = shorter.clone();
            order.insert(at, n - 1);
            all.push(order);
        }
    }
    // The order sent first.
    all.sort();
    all
}

/// An append request sent earlier, and what it got (identical on both stores, checked).
struct Sent {
    events: Vec<Event>,
    condition: Option<AppendCondition>,
    outcome: Outcome,
    /// Sent by a plain `Append`/`AppendIf` op, so its ids were fresh when first sent.
    original: bool,
}

struct Run {
    pg: PostgresStore,
    mem: MemoryStore,
    next_id: u128,
    sent: Vec<Sent>,
}

impl Run {
    fn fresh_id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    fn event(&mut self, spec: &EventSpec) -> Event {
        let id = self.fresh_id();
        spec.tags.iter().fold(
            Event::new(TYPES[spec.ty], spec.payload.clone()).with_id(id),
            |e, t| e.with_tag(tag(t)),
        )
    }

    /// The head of the model store, 0 when empty.
    async fn head(&self) -> i64 {
        let read = self
            .mem
            .read(&Query::all(), ReadOptions::default().limit(0))
            .await
            .expect("memory read");
        read.head.map_or(0, Position::get)
    }

    /// Requires the same outcome from both stores for one request.
    fn compare(
        step: usize,
        pg: &Outcome,
        mem: &Outcome,
        events: &[Event],
        condition: Option<&AppendCondition>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            pg,
            mem,
            "step {}: append outcome differs (postgres left, memory right) for {:?} if {:?}",
            step,
            events,
            condition
        );
        prop_assert!(
            !matches!(mem, Outcome::Other(_) | Outcome::Invalid(_)),
            "step {step}: unexpected append error {mem:?}"
        );
        Ok(())
    }

    /// Sends one append request to both stores and requires the same outcome.
    async fn send(
        &mut self,
        step: usize,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Outcome, TestCaseError> {
        let pg = append_to(&self.pg, events.clone(), condition.clone()).await;
        let mem = append_to(&self.mem, events.clone(), condition.clone()).await;
        Self::compare(step, &pg, &mem, &events, condition.as_ref())?;
        Ok(mem)
    }

    /// Re-sending a request whose ids were fresh gives its original positions if it was stored,
    /// else the same refusal (a condition that failed keeps failing, so its ids stay unstored).
    fn check_exact_resend(
        &self,
        step: usize,
        earlier: usize,
        outcome: &Outcome,
    ) -> Result<(), TestCaseError> {
        let first = &self.sent[earlier];
        if !first.original {
            return Ok(());
        }
        let expected = match &first.outcome {
            // A replay stored nothing: it has no time of its own.
            Outcome::Appended(a) => Outcome::Appended(Appended {
                replayed: true,
                recorded_at: None,
                ..*a
            }),
            other => other.clone(),
        };
        prop_assert_eq!(
            outcome,
            &expected,
            "step {}: re-sending append #{} must give its original outcome",
            step,
            earlier
        );
        Ok(())
    }

    async fn step(&mut self, step: usize, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(specs) => {
                let events: Vec<Event> = specs.iter().map(|s| self.event(s)).collect();
                let outcome = self.send(step, events.clone(), None).await?;
                prop_assert!(
                    matches!(outcome, Outcome::Appended(a) if !a.replayed),
                    "step {step}: an unconditional append of fresh events must store them, got {outcome:?}"
                );
                self.sent.push(Sent {
                    events,
                    condition: None,
                    outcome,
                    original: true,
                });
            }
            Op::AppendIf(specs, q, after) => {
                let head = self.head().await;
                let condition =
                    AppendCondition::new(query(q), after.as_ref().map(|a| position(a, head)));
                let events: Vec<Event> = specs.iter().map(|s| self.event(s)).collect();
                let outcome = self
                    .send(step, events.clone(), Some(condition.clone()))
                    .await?;
                self.sent.push(Sent {
                    events,
                    condition: Some(condition),
                    outcome,
                    original: true,
                });
            }
            Op::Read(q, r) => {
                let head = self.head().await;
                let mut options =
                    ReadOptions::default().after_opt(r.after.as_ref().map(|a| position(a, head)));
                if let Some(up_to) = &r.up_to {
                    options = options.up_to(position(up_to, head));
                }
                if let Some(limit) = r.limit {
                    options = options.limit(limit);
                }
                if r.backwards {
                    options = options.backwards();
                }
                let q = query(q);
                let pg = answer(self.pg.read(&q, options).await);
                let mem = answer(self.mem.read(&q, options).await);
                prop_assert!(mem.is_ok(), "step {step}: memory read failed: {mem:?}");
                prop_assert_eq!(
                    pg,
                    mem,
                    "step {}: read differs (postgres left, memory right) for {:?} with {:?}",
                    step,
                    q,
                    options
                );
            }
            Op::Resend(pick, how) => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let earlier = pick.index(self.sent.len());
                let mut events = self.sent[earlier].events.clone();
                let condition = self.sent[earlier].condition.clone();
                let exact = matches!(how, Resend::Exact);
                match how {
                    Resend::Exact => {}
                    Resend::Slice(a, b) => {
                        let (a, b) = (a.index(events.len()), b.index(events.len()));
                        events = events[a.min(b)..=a.max(b)].to_vec();
                    }
                    Resend::ChangedPayload(i) => {
                        let i = i.index(events.len());
                        let changed = json!({"changed": step});
                        events[i] = events[i].tags().iter().fold(
                            Event::new(events[i].event_type(), changed).with_id(events[i].id()),
                            |e, t| e.with_tag(t.clone()),
                        );
                    }
                    Resend::WithFreshEvent => {
                        let id = self.fresh_id();
                        events.push(Event::new("A", json!({})).with_id(id));
                    }
                    Resend::Reversed => events.reverse(),
                }
                let outcome = self.send(step, events.clone(), condition.clone()).await?;
                if exact {
                    self.check_exact_resend(step, earlier, &outcome)?;
                }
                self.sent.push(Sent {
                    events,
                    condition,
                    outcome,
                    original: false,
                });
            }
            Op::Batch(items) => self.batch(step, items).await?,
        }
        Ok(())
    }

    async fn batch(&mut self, step: usize, items: &[BatchItem]) -> Result<(), TestCaseError> {
        let head = self.head().await;
        let base = self.sent.len();
        let mut requests: Vec<Request> = Vec::new();
        for item in items {
            match item {
                BatchItem::Append(specs) => {
                    let events = specs.iter().map(|s| self.event(s)).collect();
                    requests.push((events, None, None));
                }
                BatchItem::AppendIf(specs, q, after) => {
                    let condition =
                        AppendCondition::new(query(q), after.as_ref().map(|a| position(a, head)));
                    let events = specs.iter().map(|s| self.event(s)).collect();
                    requests.push((events, Some(condition), None));
                }
                BatchItem::Resend(pick) => {
                    let candidates = base + requests.len();
                    if candidates == 0 {
                        continue;
                    }
                    let earlier = pick.index(candidates);
                    let (events, condition) = match earlier.checked_sub(base) {
                        None => {
                            let s = &self.sent[earlier];
                            (s.events.clone(), s.condition.clone())
                        }
                        Some(k) => (requests[k].0.clone(), requests[k].1.clone()),
                    };
                    requests.push((events, condition, Some(earlier)));
                }
            }
        }
        let pg_outcomes = self.send_concurrently_to_postgres(step, &requests).await?;
        // The requests were concurrent, so any order of them is a correct answer (the group
        // committer defers a request that depends on another of its batch to the next batch). The
        // model must reach the same outcomes in one of the orders; it then continues from there.
        let before = self
            .mem
            .read(&Query::all(), ReadOptions::default())
            .await
            .expect("memory read")
            .events;
        let mut in_order = None;
        let mut matched = None;
        for order in permutations(requests.len()) {
            let model = MemoryStore::new();
            for e in &before {
                model.append(vec![e.event.clone()]).await.expect("copy");
            }
            let mut outcomes = vec![None; requests.len()];
            for &r in &order {
                let (events, condition, _) = &requests[r];
                outcomes[r] = Some(append_to(&model, events.clone(), condition.clone()).await);
            }
            let outcomes: Vec<Outcome> = outcomes.into_iter().map(Option::unwrap).collect();
            if in_order.is_none() {
                in_order = Some(outcomes.clone());
            }
            if outcomes == pg_outcomes {
                matched = Some(model);
                break;
            }
        }
        let Some(model) = matched else {
            return Err(TestCaseError::fail(format!(
                "step {step}: no order of the concurrent requests {requests:?} gives the \
                 outcomes of postgres {pg_outcomes:?} (the model in the order sent: {in_order:?})"
            )));
        };
        self.mem = model;
        for ((events, condition, resent), outcome) in requests.into_iter().zip(pg_outcomes) {
            prop_assert!(
                !matches!(outcome, Outcome::Other(_) | Outcome::Invalid(_)),
                "step {step}: unexpected append error {outcome:?}"
            );
            // A request from before the batch has one answer whatever the order.
            if let Some(earlier) = resent.filter(|&e| e < base) {
                self.check_exact_resend(step, earlier, &outcome)?;
            }
            self.sent.push(Sent {
                events,
                condition,
                outcome,
                original: resent.is_none(),
            });
        }
        Ok(())
    }

    /// Sends the requests to the PostgreSQL store all at once and waits for every answer, for
    /// at most [`BATCH_TIMEOUT`] (a request that never gets an answer fails the case).
    async fn send_concurrently_to_postgres(
        &self,
        step: usize,
        requests: &[Request],
    ) -> Result<Vec<Outcome>, TestCaseError> {
        let mut pending: FuturesUnordered<_> = requests
            .iter()
            .enumerate()
            .map(|(r, (events, condition, _))| async move {
                (
                    r,
                    append_to(&self.pg, events.clone(), condition.clone()).await,
                )
            })
            .collect();
        let mut outcomes = vec![None; requests.len()];
        let deadline = tokio::time::Instant::now() + BATCH_TIMEOUT;
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(Some((r, outcome))) => outcomes[r] = Some(outcome),
                Ok(None) => break,
                Err(_) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: concurrent appends unanswered after {BATCH_TIMEOUT:?}: \
                         requests {requests:?}, answers so far {outcomes:?}"
                    )));
                }
            }
        }
        Ok(outcomes.into_iter().map(Option::unwrap).collect())
    }

    /// Both stores hold the same events at the end.
    async fn same_contents(&self) -> Result<(), TestCaseError> {
        let pg = answer(self.pg.read(&Query::all(), ReadOptions::default()).await);
        let mem = answer(self.mem.read(&Query::all(), ReadOptions::default()).await);
        prop_assert_eq!(
            pg,
            mem,
            "final contents differ (postgres left, memory right)"
        );
        Ok(())
    }
}

async fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let db = TestDatabase::create()
        .await
        .map_err(|e| TestCaseError::fail(format!("test database: {e:?}")))?;
    let pg = db
        .store()
        .await
        .map_err(|e| TestCaseError::fail(format!("store: {e:?}")))?;
    let mut run = Run {
        pg,
        mem: MemoryStore::new(),
        next_id: 0,
        sent: Vec::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        run.step(step, op).await?;
    }
    run.same_contents().await?;
    drop(run);
    drop(db);
    Ok(())
}

proptest! {
    // PROPTEST_CASES (and PROPTEST_MAX_SHRINK_TIME) override these: the macro applies the
    // environment to this configuration.
    #![proptest_config(ProptestConfig {
        cases: 28,
        // Every case runs on a database of its own: bound the time spent shrinking a failure.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn postgres_store_answers_like_the_memory_model(ops in vec(op(), 1..=40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(run(&ops))?;
    }
}
