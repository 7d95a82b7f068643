//! Chains and warm leaf projections, on PostgreSQL and on `MemoryStore`: regressions of three
//! fixes in the command actor (`src/runtime/command_actor.rs`).
//!
//! 1. Commands of one chain fold one state per (state type, leaves), not per union query: two
//!    decisions reading the same pair of projections in swapped order (same union query when a
//!    component's query holds the other's) each decide on their own components. Every decision
//!    records the state it decided on in its event, and the test recomputes it from the events
//!    stored before that event.
//! 2. A keyed command executed again, deciding the same events again (the store answers a replay),
//!    queued in one chain with other commands: the others decide on the true state, not one that
//!    counts the keyed events twice (a rule "at most N" that double counting would break).
//!    Also: a keyed execution whose events another writer stored after its read (another process
//!    executing the same request) answers `replayed`, not a commit of its own.
//! 3. Leaves are cached one by one, each with the position it has seen: a tuple joined from
//!    leaves seen at different positions folds each only after its own; a model test of
//!    concurrent audited transfers on several actors (each recording the balances it decided on),
//!    then events appended by another writer that warm leaves must fold.
//!
//! A chain is forced with one actor and a [`Gate`]: a first command holds the actor inside
//! `decide` while the others queue behind it; opening the gate lets them run as one chain.

#[path = "support/gate.rs"]
mod gate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    AppendCondition, AppendError, Appended, Committed, Decision, Event, EventStore, ExecuteError,
    MemoryStore, P, Position, Projection, Query, QueryItem, ReadOptions, ReadResult, Runtime,
    RuntimeBuilder, SequencedEvent, StoreError, keyed_event_id,
};
use dcb_scenarios::transfer::{self, Account, INVARIANT_SQL};
use futures::future::join_all;
use gate::{Gate, finish, poll_each_once};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A store that records the `after` bound of every read (how far back a chain had to read).
struct Recording<S> {
    inner: S,
    reads: Mutex<Vec<Option<Position>>>,
}

impl<S> Recording<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// The `after` of each read since the last call.
    fn take_reads(&self) -> Vec<Option<Position>> {
        std::mem::take(&mut *self.reads.lock().expect("reads"))
    }
}

impl<S: EventStore> EventStore for Recording<S> {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        self.reads
            .lock()
            .expect("reads")
            .push(options.after_position());
        self.inner.read(query, options).await
    }

    async fn append(&self, events: Vec<Event>) -> Result<Appended, AppendError> {
        self.inner.append(events).await
    }

    async fn append_if(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<Appended, AppendError> {
        self.inner.append_if(events, condition).await
    }

    async fn append_as(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, AppendError> {
        self.inner.append_as(append_id, events, condition).await
    }

    async fn read_ids(&self, ids: &[Uuid]) -> Result<Vec<SequencedEvent>, StoreError> {
        self.inner.read_ids(ids).await
    }
}

/// Runs each check on a fresh PostgreSQL database and on a fresh `MemoryStore`; a check gets the
/// store (wrapped in [`Recording`]) and, on PostgreSQL, the database for SQL checks.
macro_rules! on_both_stores {
    ($($(#[$attr:meta])* $check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            $(#[$attr])*
            async fn postgres() {
                let db = super::TestDatabase::create().await.expect("test database");
                let store = db.store().await.expect("store");
                super::$check(super::Recording::new(store), Some(&db)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            $(#[$attr])*
            async fn memory() {
                super::$check(super::Recording::new(super::MemoryStore::new()), None).await;
            }
        }
    )*};
}

on_both_stores!(
    swapped_tuples_in_one_chain_decide_on_their_own_components,
    a_keyed_replay_in_a_chain_does_not_count_its_events_twice,
    a_keyed_execution_stored_by_another_writer_after_its_read_answers_replayed,
    leaves_seen_at_different_positions_each_fold_only_what_they_have_not_seen,
    concurrent_audited_transfers_match_a_replay_and_warm_leaves_see_other_writers,
);

/// A command's outcome, whatever its decision's rejection type.
type Outcome = Result<Committed, String>;
/// A command on its way, submitted at its first poll.
type Submitted<T = Outcome> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `execute` (or `execute_with_key` with `key`) as a boxed future: the command is submitted at
/// its first poll.
fn submit<S, D>(runtime: &Runtime<S>, key: Option<&str>, decision: D) -> Submitted
where
    S: EventStore + 'static,
    D: Decision,
    D::Rejection: std::fmt::Debug,
{
    let runtime = runtime.clone();
    let key = key.map(str::to_owned);
    Box::pin(async move {
        let outcome = match key {
            Some(key) => runtime.execute_with_key(key, decision).await,
            None => runtime.execute(decision).await,
        };
        outcome.map_err(|e| format!("{e:?}"))
    })
}

/// Holds the runtime's only actor inside `decide` (of `holder`, whose gate is `gate`), submits
/// `queued` behind it in order, checks none of them was answered while the actor was held, then
/// opens the gate: the queued commands are then taken together, as one chain. Outcomes in order.
async fn as_one_chain<S, H, T>(
    runtime: &Runtime<S>,
    gate: &Arc<Gate>,
    holder: H,
    queued: Vec<Submitted<T>>,
) -> Vec<T>
where
    S: EventStore + 'static,
    H: Decision,
    H::Rejection: std::fmt::Debug,
    T: std::fmt::Debug,
{
    let held = tokio::spawn(submit(runtime, None, holder));
    gate.arrived(1).await;
    let polled = poll_each_once(queued).await;
    for (i, (_, output)) in polled.iter().enumerate() {
        assert!(
            output.is_none(),
            "command {i} was answered while the only actor was held: {output:?}"
        );
    }
    gate.open();
    held.await
        .expect("holder task")
        .expect("the holding command commits");
    finish(polled).await
}

async fn all_events<S: EventStore>(store: &S) -> Vec<SequencedEvent> {
    store
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read all")
        .events
}

#[track_caller]
fn committed(outcome: &Outcome, what: &str) -> Committed {
    match outcome {
        Ok(c) => c.clone(),
        Err(e) => panic!("{what}: expected a commit, got {e}"),
    }
}

#[track_caller]
fn at(events: &[SequencedEvent], position: Position) -> &SequencedEvent {
    events
        .iter()
        .find(|e| e.position == position)
        .unwrap_or_else(|| panic!("no event at {position}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Swapped tuples in one chain
// ---------------------------------------------------------------------------------------------

/// The events carrying every tag of at least one of the sets (`t:<value>` tags), counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tagged(Vec<Vec<&'static str>>);

impl Tagged {
    /// Events carrying all of these tags.
    fn all_of(values: &[&'static str]) -> Self {
        Self(vec![values.to_vec()])
    }

    /// Events carrying any of these tags.
    fn any_of(values: &[&'static str]) -> Self {
        Self(values.iter().map(|v| vec![*v]).collect())
    }
}

impl Projection for Tagged {
    type State = u64;

    fn query(&self) -> Query {
        Query::from_items(
            self.0
                .iter()
                .map(|set| QueryItem::with_tags(set.iter().map(|v| P("t", *v)))),
        )
    }

    fn initial_state(&self) -> u64 {
        0
    }

    fn evolve(&self, count: &mut u64, _event: &SequencedEvent) {
        *count += 1;
    }
}

/// Records the two counts it decided on, by component. Its event carries `t:a`, so the probes
/// after it in a chain count it.
struct Probe {
    label: String,
    first: Tagged,
    second: Tagged,
    gate: Option<Arc<Gate>>,
}

impl Decision for Probe {
    const NAME: &'static str = "probe";
    type Projection = (Tagged, Tagged);
    type Rejection = ();

    fn projection(&self) -> (Tagged, Tagged) {
        (self.first.clone(), self.second.clone())
    }

    fn decide(&self, (first, second): &(u64, u64)) -> Result<Vec<Event>, ()> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        Ok(vec![
            Event::new(
                "Probed",
                json!({"label": self.label, "first": first, "second": second}),
            )
            .tagged("t", "a")
            .tagged("t", "probe"),
        ])
    }
}

fn noted(values: &[&str]) -> Event {
    values
        .iter()
        .fold(Event::new("Noted", json!({})), |e, v| e.tagged("t", *v))
}

/// `n` copies of [`noted`].
fn noted_n(n: usize, values: &[&str]) -> Vec<Event> {
    (0..n).map(|_| noted(values)).collect()
}

/// Pairs of projections, several in both orders. `(a, a|b)`, `(a|b, a)` and `(a|b, b)` read the
/// same union query (`a` or `b`): grouped by union query they would share one state.
fn probe_pairs() -> Vec<(&'static str, Tagged, Tagged)> {
    let a = || Tagged::all_of(&["a"]);
    let b = || Tagged::all_of(&["b"]);
    let a_and_b = || Tagged::all_of(&["a", "b"]);
    let a_or_b = || Tagged::any_of(&["a", "b"]);
    vec![
        ("a, a&b", a(), a_and_b()),
        ("a&b, a", a_and_b(), a()),
        ("a, a|b", a(), a_or_b()),
        ("a|b, a", a_or_b(), a()),
        ("a|b, b", a_or_b(), b()),
        ("a, a", a(), a()),
        ("b, a|b", b(), a_or_b()),
    ]
}

async fn swapped_tuples_in_one_chain_decide_on_their_own_components<S: EventStore + 'static>(
    store: S,
    _db: Option<&TestDatabase>,
) {
    let mut seed = noted_n(3, &["a"]);
    seed.extend(noted_n(2, &["a", "b"]));
    seed.extend(noted_n(4, &["b"]));
    store.append(seed).await.expect("seed");
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");

    // Round 0 starts cold; round 1 finds every leaf warm, and must fold what another writer
    // appended since.
    for round in 0..2 {
        if round == 1 {
            let mut more = noted_n(2, &["a"]);
            more.extend(noted_n(1, &["b"]));
            more.extend(noted_n(1, &["a", "b"]));
            runtime.store().append(more).await.expect("other writer");
        }
        let pairs = probe_pairs();
        let queued = pairs
            .iter()
            .map(|(label, first, second)| {
                submit(
                    &runtime,
                    None,
                    Probe {
                        label: format!("{round}: {label}"),
                        first: first.clone(),
                        second: second.clone(),
                        gate: None,
                    },
                )
            })
            .collect();
        let gate = Gate::closed();
        let holder = Probe {
            label: format!("{round}: hold"),
            first: Tagged::all_of(&["hold"]),
            second: Tagged::all_of(&["hold", "x"]),
            gate: Some(gate.clone()),
        };
        let outcomes = as_one_chain(&runtime, &gate, holder, queued).await;

        let events = all_events(runtime.store()).await;
        let mut transactions = BTreeSet::new();
        for ((label, first, second), outcome) in pairs.iter().zip(&outcomes) {
            let c = committed(outcome, label);
            assert_eq!(c.positions.len(), 1, "{label}: {c:?}");
            let probed = at(&events, c.positions[0]);
            transactions.insert(probed.recorded_at);
            let before: Vec<&SequencedEvent> = events
                .iter()
                .filter(|e| e.position < probed.position)
                .collect();
            let count = |t: &Tagged| {
                let q = t.query();
                before.iter().filter(|e| q.matches(&e.event)).count()
            };
            let payload = probed.event.payload();
            assert_eq!(
                (payload["first"].as_u64(), payload["second"].as_u64()),
                (
                    Some(u64::try_from(count(first)).expect("count")),
                    Some(u64::try_from(count(second)).expect("count"))
                ),
                "round {round}, probe ({label}) at {}: recorded (first, second) vs the events \
                 before it",
                probed.position
            );
        }
        // One append: one transaction (the appender never merges one actor's appends, which
        // wait for each other).
        assert_eq!(
            transactions.len(),
            1,
            "round {round}: the probes were not one chain"
        );
    }
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A keyed replay in a chain
// ---------------------------------------------------------------------------------------------

/// The items put into a bin, in order.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Items(String);

impl Projection for Items {
    type State = Vec<String>;

    fn query(&self) -> Query {
        QueryItem::new(["Put"], [P("bin", &*self.0)]).into()
    }

    fn initial_state(&self) -> Vec<String> {
        Vec::new()
    }

    fn evolve(&self, items: &mut Vec<String>, event: &SequencedEvent) {
        items.push(
            event.event.payload()["item"]
                .as_str()
                .expect("item")
                .to_owned(),
        );
    }
}

fn put_event(bin: &str, item: &str) -> Event {
    Event::new("Put", json!({"item": item})).tagged("bin", bin)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Full {
    items: Vec<String>,
}

/// Puts an item into a bin holding fewer than `cap`. Always the same event for the same item:
/// executed again under its key, it decides the events already stored (a replay).
struct Put {
    bin: String,
    item: String,
    cap: usize,
    gate: Option<Arc<Gate>>,
}

impl Put {
    fn new(bin: &str, item: &str, cap: usize) -> Self {
        Self {
            bin: bin.to_owned(),
            item: item.to_owned(),
            cap,
            gate: None,
        }
    }
}

impl Decision for Put {
    const NAME: &'static str = "put";
    type Projection = Items;
    type Rejection = Full;

    fn projection(&self) -> Items {
        Items(self.bin.clone())
    }

    fn decide(&self, items: &Vec<String>) -> Result<Vec<Event>, Full> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        if items.len() >= self.cap {
            return Err(Full {
                items: items.clone(),
            });
        }
        Ok(vec![put_event(&self.bin, &self.item)])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Duplicated(Vec<String>);

/// Records a bin's items, refusing if one is there twice. A tuple: another state (another
/// group of the chain) than `Put`'s.
struct Check(String);

impl Decision for Check {
    const NAME: &'static str = "check";
    type Projection = (Items, Items);
    type Rejection = Duplicated;

    fn projection(&self) -> (Items, Items) {
        (Items(self.0.clone()), Items(format!("{}-spare", self.0)))
    }

    fn decide(&self, (items, _): &(Vec<String>, Vec<String>)) -> Result<Vec<Event>, Duplicated> {
        let distinct: BTreeSet<&String> = items.iter().collect();
        if distinct.len() != items.len() {
            return Err(Duplicated(items.clone()));
        }
        Ok(vec![
            Event::new("Checked", json!({"items": items})).tagged("check", &*self.0),
        ])
    }
}

/// The items of `bin` put before `position`, from the stored events.
fn items_before(events: &[SequencedEvent], bin: &str, position: Position) -> Vec<String> {
    let mut items = Vec::new();
    let projection = Items(bin.to_owned());
    let query = projection.query();
    for e in events
        .iter()
        .filter(|e| e.position < position && query.matches(&e.event))
    {
        projection.evolve(&mut items, e);
    }
    items
}

async fn a_keyed_replay_in_a_chain_does_not_count_its_events_twice<S: EventStore + 'static>(
    store: S,
    db: Option<&TestDatabase>,
) {
    const CAP: usize = 3;
    store
        .append(vec![put_event("b1", "s")])
        .await
        .expect("seed");
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let first = runtime
        .execute_with_key("req-k", Put::new("b1", "k", CAP))
        .await
        .expect("the first execution commits");
    assert!(!first.replayed, "{first:?}");
    assert_eq!(first.positions.len(), 1);

    // One chain: the keyed command again (deciding the same event: the store replays it), a put
    // that fits under the cap only if "k" is counted once (s, k, o), and a check refusing any
    // item seen twice (another group of the chain).
    let gate = Gate::closed();
    let holder = Put {
        gate: Some(gate.clone()),
        ..Put::new("hold", "h", CAP)
    };
    let queued = vec![
        submit(&runtime, Some("req-k"), Put::new("b1", "k", CAP)),
        submit(&runtime, None, Put::new("b1", "o", CAP)),
        submit(&runtime, None, Check("b1".to_owned())),
    ];
    let outcomes = as_one_chain(&runtime, &gate, holder, queued).await;

    let again = committed(&outcomes[0], "the keyed re-execution");
    assert!(again.replayed, "a replay of the first execution: {again:?}");
    assert_eq!(again.attempts, 0, "{again:?}");
    assert_eq!(again.positions, first.positions, "the first positions");
    assert_eq!(again.events, first.events, "the first events");

    let other = committed(
        &outcomes[1],
        "a put fitting under the cap (rejected if the keyed event is counted twice)",
    );
    assert!(!other.replayed, "{other:?}");
    assert_eq!(other.positions.len(), 1);

    let check = committed(
        &outcomes[2],
        "a check of the bin (rejected if it sees the keyed event twice)",
    );
    let events = all_events(runtime.store()).await;
    let checked = at(&events, check.positions[0]);
    assert_eq!(
        checked.event.payload()["items"],
        json!(items_before(&events, "b1", checked.position)),
        "the check decided on the items stored before it"
    );

    // Stored once: s, k, o.
    assert_eq!(
        items_before(&events, "b1", Position::new(i64::MAX)),
        ["s", "k", "o"]
    );
    let keyed_id = keyed_event_id(Put::NAME, "req-k", 0);
    assert_eq!(
        events.iter().filter(|e| e.event.id() == keyed_id).count(),
        1,
        "the keyed event is stored once"
    );
    if let Some(db) = db {
        let client = db.client().await.expect("client");
        let n: i64 = client
            .query_one("SELECT count(*) FROM events WHERE id = $1", &[&keyed_id])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1, "rows with the keyed id");
    }
    runtime.shutdown().await;
}

/// The keyed command reads, then (held in `decide`) another writer stores its very events (same
/// key, same content: another process executing the same request): its append is a replay of
/// events it did not store, so it answers `replayed` (its ids are taken, see
/// `Runtime::execute_with_key`), not a commit of its own.
async fn a_keyed_execution_stored_by_another_writer_after_its_read_answers_replayed<
    S: EventStore + 'static,
>(
    store: S,
    _db: Option<&TestDatabase>,
) {
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let gate = Gate::closed();
    let held = tokio::spawn(submit(
        &runtime,
        Some("req-x"),
        Put {
            gate: Some(gate.clone()),
            ..Put::new("b2", "x", 5)
        },
    ));
    gate.arrived(1).await;
    let stored = runtime
        .store()
        .append(vec![put_event("b2", "x").with_id(keyed_event_id(
            Put::NAME,
            "req-x",
            0,
        ))])
        .await
        .expect("the other writer's copy");
    gate.open();
    let outcome = committed(&held.await.expect("task"), "the keyed execution");
    assert_eq!(outcome.positions, vec![stored.first], "{outcome:?}");
    assert!(
        outcome.replayed && outcome.attempts == 0,
        "another writer stored these events: a replay, not this execution's commit: {outcome:?}"
    );
    let events = all_events(runtime.store()).await;
    assert_eq!(events.len(), 1, "stored once: {events:?}");
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Warm leaves
// ---------------------------------------------------------------------------------------------

type Balances = (Option<i64>, Option<i64>);

/// Answers the two balances it read, as a rejection: appends nothing.
struct Peek(String, String);

impl Peek {
    fn new(a: &str, b: &str) -> Self {
        Self(a.to_owned(), b.to_owned())
    }
}

impl Decision for Peek {
    const NAME: &'static str = "peek";
    type Projection = (Account, Account);
    type Rejection = Balances;

    fn projection(&self) -> (Account, Account) {
        (Account(self.0.clone()), Account(self.1.clone()))
    }

    fn decide(&self, balances: &Balances) -> Result<Vec<Event>, Balances> {
        Err(*balances)
    }
}

async fn peek<S: EventStore + 'static>(runtime: &Runtime<S>, a: &str, b: &str) -> Balances {
    match runtime.execute(Peek::new(a, b)).await {
        Err(ExecuteError::Rejected(balances)) => balances,
        other => panic!("peek({a}, {b}): {other:?}"),
    }
}

async fn leaves_seen_at_different_positions_each_fold_only_what_they_have_not_seen<
    S: EventStore + 'static,
>(
    store: Recording<S>,
    _db: Option<&TestDatabase>,
) {
    store
        .append(vec![
            transfer::account_opened("x", 100),
            transfer::account_opened("y", 100),
            transfer::account_opened("z", 100),
        ])
        .await
        .expect("open"); // 1..=3
    let runtime = RuntimeBuilder::new(store)
        .actors(1)
        .start()
        .await
        .expect("runtime");
    let store = runtime.store();

    // x and z warm at 3.
    assert_eq!(peek(&runtime, "x", "z").await, (Some(100), Some(100)));
    store
        .append(vec![transfer::money_transferred("x", "y", 10)])
        .await
        .expect("4: x -> y 10");
    // y (cold) and z warm at 4.
    assert_eq!(peek(&runtime, "y", "z").await, (Some(110), Some(100)));
    store
        .append(vec![transfer::money_transferred("y", "x", 5)])
        .await
        .expect("5: y -> x 5");
    // x seen at 3 must fold 4 and 5; y seen at 4 only 5 (folding 4 again: 115; reading after
    // 4 for both: x misses 4, 105).
    assert_eq!(peek(&runtime, "x", "y").await, (Some(95), Some(105)));
    // z seen at 4, x at 5: nothing new for either.
    assert_eq!(peek(&runtime, "z", "x").await, (Some(100), Some(95)));
    // A chain reads after the oldest head its leaves have seen; a leaf never read, from the start.
    let p = |n| Some(Position::new(n));
    assert_eq!(store.take_reads(), vec![None, None, p(3), p(4)]);

    // One chain reading from the start (w was never read) while the warm leaves (x, y, z, all
    // seen at 5) fold only what came after 5; each tuple in its own order.
    store
        .append(vec![transfer::money_transferred("z", "y", 7)])
        .await
        .expect("6: z -> y 7");
    store
        .append(vec![transfer::account_opened("w", 50)])
        .await
        .expect("7: open w");
    let queued: Vec<Submitted<Balances>> = [("y", "z"), ("z", "y"), ("x", "w"), ("w", "y")]
        .into_iter()
        .map(|(a, b)| {
            let runtime = runtime.clone();
            Box::pin(async move { peek(&runtime, a, b).await }) as Submitted<Balances>
        })
        .collect();
    let gate = Gate::closed();
    let holder = Put {
        gate: Some(gate.clone()),
        ..Put::new("hold", "h", 1)
    };
    let balances = as_one_chain(&runtime, &gate, holder, queued).await;
    assert_eq!(
        balances,
        vec![
            (Some(112), Some(93)),
            (Some(93), Some(112)),
            (Some(95), Some(50)),
            (Some(50), Some(112)),
        ]
    );
    // The holder's read, then the chain's: both from the start (a cold leaf each).
    assert_eq!(store.take_reads(), vec![None, None]);
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Model: concurrent audited transfers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    NoSuchAccount,
    Insufficient { balance: i64 },
}

/// A transfer (`dcb_scenarios::transfer`'s events) that records the balances it decided on and
/// its request number.
#[derive(Debug, Clone)]
struct AuditedTransfer {
    req: u64,
    from: String,
    to: String,
    amount: i64,
}

impl Decision for AuditedTransfer {
    const NAME: &'static str = "audited_transfer";
    type Projection = (Account, Account);
    type Rejection = Refused;

    fn projection(&self) -> (Account, Account) {
        (Account(self.from.clone()), Account(self.to.clone()))
    }

    fn decide(&self, balances: &Balances) -> Result<Vec<Event>, Refused> {
        let (Some(from), Some(to)) = *balances else {
            return Err(Refused::NoSuchAccount);
        };
        if from < self.amount {
            return Err(Refused::Insufficient { balance: from });
        }
        Ok(vec![
            Event::new(
                "MoneyTransferred",
                json!({
                    "from": self.from,
                    "to": self.to,
                    "amount": self.amount,
                    "req": self.req,
                    "seen_from": from,
                    "seen_to": to,
                }),
            )
            .tagged("account", &*self.from)
            .tagged("account", &*self.to),
        ])
    }
}

/// The store's history replayed in position order.
#[derive(Debug, Default)]
struct Audit {
    balances: BTreeMap<String, i64>,
    /// Every balance each account has had.
    history: HashMap<String, BTreeSet<i64>>,
    /// Where each audited transfer is stored, by request number.
    stored: HashMap<u64, Position>,
}

/// Replays every event: each transfer touches opened accounts, leaves its debited account at or
/// above zero, and (if audited) recorded the balances of both accounts just before it.
fn audit(events: &[SequencedEvent]) -> Audit {
    let mut a = Audit::default();
    for e in events {
        let payload = e.event.payload();
        match e.event.event_type() {
            "AccountOpened" => {
                let account = payload["account_id"].as_str().expect("account_id");
                let balance = payload["balance"].as_i64().expect("balance");
                a.balances.insert(account.to_owned(), balance);
                a.history
                    .entry(account.to_owned())
                    .or_default()
                    .insert(balance);
            }
            "MoneyTransferred" => {
                let from = payload["from"].as_str().expect("from");
                let to = payload["to"].as_str().expect("to");
                let amount = payload["amount"].as_i64().expect("amount");
                let (Some(&before_from), Some(&before_to)) =
                    (a.balances.get(from), a.balances.get(to))
                else {
                    panic!("{e:?} touches an account not opened");
                };
                if let Some(req) = payload["req"].as_u64() {
                    assert_eq!(
                        (payload["seen_from"].as_i64(), payload["seen_to"].as_i64()),
                        (Some(before_from), Some(before_to)),
                        "request {req} at {} decided on other balances than those before it",
                        e.position
                    );
                    assert!(
                        a.stored.insert(req, e.position).is_none(),
                        "request {req} stored twice"
                    );
                }
                assert!(before_from >= amount, "{e:?} overdraws {from}");
                for (account, balance) in [(from, before_from - amount), (to, before_to + amount)] {
                    a.balances.insert(account.to_owned(), balance);
                    a.history
                        .entry(account.to_owned())
                        .or_default()
                        .insert(balance);
                }
            }
            other => panic!("unexpected event type {other}"),
        }
    }
    a
}

/// Balances from SQL over the `events` table, and the transfer invariant's violations.
async fn sql_balances(db: &TestDatabase) -> (BTreeMap<String, i64>, i64) {
    let client = db.client().await.expect("client");
    let rows = client
        .query(
            "WITH moves AS ( \
               SELECT payload->>'account_id' AS account, (payload->>'balance')::bigint AS delta \
                 FROM events WHERE type = 'AccountOpened' \
               UNION ALL SELECT payload->>'from', -(payload->>'amount')::bigint \
                 FROM events WHERE type = 'MoneyTransferred' \
               UNION ALL SELECT payload->>'to', (payload->>'amount')::bigint \
                 FROM events WHERE type = 'MoneyTransferred') \
             SELECT account, sum(delta)::bigint FROM moves GROUP BY account",
            &[],
        )
        .await
        .expect("balances");
    let balances = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let violations: i64 = client
        .query_one(INVARIANT_SQL, &[])
        .await
        .expect("invariant")
        .get(0);
    (balances, violations)
}

/// The audit of the store; on PostgreSQL, SQL agrees and counts no violation.
async fn audit_store<S: EventStore>(store: &S, db: Option<&TestDatabase>) -> Audit {
    let audited = audit(&all_events(store).await);
    if let Some(db) = db {
        let (balances, violations) = sql_balances(db).await;
        assert_eq!(violations, 0, "INVARIANT_SQL");
        assert_eq!(balances, audited.balances, "SQL balances vs the replay");
    }
    audited
}

/// Peeks every ordered pair of accounts at once: each must read the audited balances.
async fn peek_all<S: EventStore + 'static>(runtime: &Runtime<S>, balances: &BTreeMap<String, i64>) {
    let pairs: Vec<(&String, &String)> = balances
        .keys()
        .flat_map(|a| {
            balances
                .keys()
                .filter(move |b| *b != a)
                .map(move |b| (a, b))
        })
        .collect();
    let read = join_all(pairs.iter().map(|(a, b)| peek(runtime, a, b))).await;
    for ((a, b), got) in pairs.iter().zip(read) {
        assert_eq!(
            got,
            (Some(balances[*a]), Some(balances[*b])),
            "peek({a}, {b})"
        );
    }
}

async fn concurrent_audited_transfers_match_a_replay_and_warm_leaves_see_other_writers<
    S: EventStore + 'static,
>(
    store: Recording<S>,
    db: Option<&TestDatabase>,
) {
    const ACCOUNTS: usize = 6;
    const OPENING: i64 = 100;
    const CLIENTS: u64 = 16;
    const PER_CLIENT: u64 = 50;
    store
        .append(transfer::accounts(ACCOUNTS, OPENING))
        .await
        .expect("open accounts");
    let runtime = RuntimeBuilder::new(store)
        .actors(4)
        .max_attempts(1_000)
        .backoff(Duration::from_micros(200), Duration::from_millis(5))
        .deadline(Duration::from_secs(30))
        .start()
        .await
        .expect("runtime");

    // Phase 1: random transfers from concurrent callers.
    let seed = fastrand::u64(..);
    let kind = std::any::type_name::<S>();
    eprintln!("{kind}: seed {seed}");
    let clients = (0..CLIENTS).map(|c| {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ c);
            let mut done = Vec::new();
            for i in 0..PER_CLIENT {
                let from = rng.usize(..ACCOUNTS);
                let to = (from + rng.usize(1..ACCOUNTS)) % ACCOUNTS;
                let command = AuditedTransfer {
                    req: c * 1_000 + i,
                    from: format!("a{from}"),
                    to: format!("a{to}"),
                    amount: rng.i64(1..=80),
                };
                let outcome = runtime.execute(command.clone()).await;
                done.push((command, outcome));
            }
            done
        })
    });
    let mut outcomes = Vec::new();
    for client in join_all(clients).await {
        outcomes.extend(client.expect("client task"));
    }

    let audited = audit_store(runtime.store(), db).await;
    let mut model: BTreeMap<String, i64> =
        (0..ACCOUNTS).map(|a| (format!("a{a}"), OPENING)).collect();
    let (mut commits, mut refusals) = (0, 0);
    for (command, outcome) in &outcomes {
        match outcome {
            Ok(c) => {
                commits += 1;
                assert!(!c.replayed && c.positions.len() == 1, "{command:?}: {c:?}");
                assert_eq!(
                    audited.stored.get(&command.req),
                    Some(&c.positions[0]),
                    "{command:?} is stored where its answer says"
                );
                *model.get_mut(&command.from).expect("from") -= command.amount;
                *model.get_mut(&command.to).expect("to") += command.amount;
            }
            Err(ExecuteError::Rejected(Refused::Insufficient { balance })) => {
                refusals += 1;
                assert!(
                    *balance < command.amount && audited.history[&command.from].contains(balance),
                    "{command:?} refused on a balance of {balance}, never {}'s: {:?}",
                    command.from,
                    audited.history[&command.from]
                );
                assert!(!audited.stored.contains_key(&command.req), "{command:?}");
            }
            Err(e) => panic!("{command:?}: {e:?}"),
        }
    }
    assert_eq!(
        audited.stored.len(),
        commits,
        "every stored transfer was answered committed"
    );
    assert_eq!(
        model, audited.balances,
        "balances from the committed answers vs the store"
    );
    let retried = outcomes
        .iter()
        .filter(|(_, o)| o.as_ref().is_ok_and(|c| c.attempts > 1))
        .count();
    eprintln!("{kind}: {commits} commits ({retried} after a conflict), {refusals} refusals");
    assert!(
        commits > 0 && refusals > 0,
        "both outcomes exercised: {commits} commits, {refusals} refusals"
    );

    // Phase 2: every actor holds every leaf warm, at one head ...
    peek_all(&runtime, &audited.balances).await;
    let head = all_events(runtime.store()).await.last().map(|e| e.position);
    // ... then another writer drains the richest account into the poorest.
    let (rich, &rich_balance) = audited
        .balances
        .iter()
        .max_by_key(|(_, b)| **b)
        .expect("accounts");
    let (poor, &poor_balance) = audited
        .balances
        .iter()
        .filter(|(a, _)| *a != rich)
        .min_by_key(|(_, b)| **b)
        .expect("accounts");
    assert!(rich_balance > 0);
    runtime
        .store()
        .append(vec![transfer::money_transferred(rich, poor, rich_balance)])
        .await
        .expect("the other writer's transfer");
    runtime.store().take_reads();

    // The rich account is empty now: a warm leaf still at its old balance would let this commit.
    let drained = AuditedTransfer {
        req: 1_000_000,
        from: rich.clone(),
        to: poor.clone(),
        amount: 1,
    };
    match runtime.execute(drained).await {
        Err(ExecuteError::Rejected(Refused::Insufficient { balance: 0 })) => {}
        other => panic!("{rich} was drained by another writer: {other:?}"),
    }
    // The poor account holds exactly both balances: a warm leaf at its old balance would refuse.
    let everything = AuditedTransfer {
        req: 1_000_001,
        from: poor.clone(),
        to: rich.clone(),
        amount: poor_balance + rich_balance,
    };
    let moved = runtime
        .execute(everything)
        .await
        .unwrap_or_else(|e| panic!("{poor} holds {}: {e:?}", poor_balance + rich_balance));
    assert_eq!(moved.positions.len(), 1);
    // Both read only what came after the head their warm leaves had seen (the second one's
    // leaves were read again by the first if both accounts are on one actor).
    let reads = runtime.store().take_reads();
    let next = head.map(|h| Position::new(h.get() + 1));
    assert!(
        reads.len() == 2 && reads[0] == head && (reads[1] == head || reads[1] == next),
        "reads after {reads:?}, the leaves were warm at {head:?}"
    );

    let audited = audit_store(runtime.store(), db).await;
    assert_eq!(audited.balances[rich], poor_balance + rich_balance);
    assert_eq!(audited.balances[poor], 0);
    assert!(audited.stored.contains_key(&1_000_001));
    peek_all(&runtime, &audited.balances).await;
    runtime.shutdown().await;
}
