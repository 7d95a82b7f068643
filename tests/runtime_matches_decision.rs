//! The runtime decides exactly what the pure decision decides (`testing::given(..).when(..)`),
//! for projections whose `evolve` reads their own fields, through chains, warm state and several
//! commands in flight (issue 9).
//!
//! Random cases: a history stored directly, then waves of random commands, each wave either one
//! command after the other or all at once (one chain per actor, two actors, so commands on
//! several entities also conflict between actors), with events from another writer between
//! waves (warm state must see them). Three decisions over two projection types that share one
//! query and differ in a field `evolve` reads (the kind counted), one of them a pair of two
//! entities' projections. Checked:
//!
//! - a committed command decided what the pure decision decides on the history stored before
//!   its events (the append condition guarantees nothing it read changed in between);
//! - a rejected command is rejected by the pure decision on the history when it was answered
//!   (exactly, for one command at a time; for a wave all at once, on the history after the wave:
//!   every rule here only gets stricter as events are added, so a rejection that the final
//!   history does not justify was wrong when it was made);
//! - no other answer, and exactly the committed commands' events are stored.

#[path = "support/gate.rs"]
mod gate;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

use dcb_runtime::testing::{TestDatabase, given};
use dcb_runtime::{
    Committed, Decision, Event, EventStore, ExecuteError, MemoryStore, P, Projection, Query,
    QueryItem, ReadOptions, Runtime, RuntimeBuilder, SequencedEvent,
};
use gate::{finish, poll_each_once};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

const ENTITIES: u8 = 3;
const KINDS: u8 = 3;

fn took_query(entity: &str) -> Query {
    QueryItem::new(["Took"], [P("entity", entity)]).into()
}

fn kind_of(event: &SequencedEvent) -> Option<u64> {
    event.event.payload()["kind"].as_u64()
}

/// How many of an entity's events are of its own kind.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Quota {
    entity: String,
    kind: u8,
}

impl Projection for Quota {
    type State = u32;
    fn query(&self) -> Query {
        took_query(&self.entity)
    }
    fn initial_state(&self) -> u32 {
        0
    }
    fn evolve(&self, n: &mut u32, event: &SequencedEvent) {
        if kind_of(event) == Some(u64::from(self.kind)) {
            *n += 1;
        }
    }
}

/// How many of an entity's events are of another kind than its own: the same query as
/// [`Quota`], another type.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Others {
    entity: String,
    kind: u8,
}

impl Projection for Others {
    type State = u32;
    fn query(&self) -> Query {
        took_query(&self.entity)
    }
    fn initial_state(&self) -> u32 {
        0
    }
    fn evolve(&self, n: &mut u32, event: &SequencedEvent) {
        if kind_of(event) != Some(u64::from(self.kind)) {
            *n += 1;
        }
    }
}

fn took(entities: &[&str], kind: u8) -> Event {
    entities.iter().fold(
        Event::new("Took", json!({"kind": kind, "entities": entities})),
        |event, entity| event.tagged("entity", *entity),
    )
}

/// Takes one of `kind` for an entity while it has fewer than `max`.
struct Take {
    entity: String,
    kind: u8,
    max: u32,
}

impl Decision for Take {
    const NAME: &'static str = "take";
    type Projection = Quota;
    type Rejection = ();
    fn projection(&self) -> Quota {
        Quota {
            entity: self.entity.clone(),
            kind: self.kind,
        }
    }
    fn decide(&self, n: &u32) -> Result<Vec<Event>, ()> {
        if *n >= self.max {
            return Err(());
        }
        Ok(vec![took(&[&self.entity], self.kind)])
    }
}

/// Takes one of `kind` for two entities at once while both have fewer than `max`.
struct Pair {
    a: String,
    b: String,
    kind: u8,
    max: u32,
}

impl Decision for Pair {
    const NAME: &'static str = "pair";
    type Projection = (Quota, Quota);
    type Rejection = ();
    fn projection(&self) -> (Quota, Quota) {
        let quota = |entity: &String| Quota {
            entity: entity.clone(),
            kind: self.kind,
        };
        (quota(&self.a), quota(&self.b))
    }
    fn decide(&self, (a, b): &(u32, u32)) -> Result<Vec<Event>, ()> {
        if *a >= self.max || *b >= self.max {
            return Err(());
        }
        Ok(vec![took(&[&self.a, &self.b], self.kind)])
    }
}

/// Takes one of `kind` while twice its own plus the others stay below twice `max`.
struct Mixed {
    entity: String,
    kind: u8,
    max: u32,
}

impl Decision for Mixed {
    const NAME: &'static str = "mixed";
    type Projection = (Quota, Others);
    type Rejection = ();
    fn projection(&self) -> (Quota, Others) {
        let (entity, kind) = (self.entity.clone(), self.kind);
        (
            Quota {
                entity: entity.clone(),
                kind,
            },
            Others { entity, kind },
        )
    }
    fn decide(&self, (own, others): &(u32, u32)) -> Result<Vec<Event>, ()> {
        if 2 * own + others >= 2 * self.max {
            return Err(());
        }
        Ok(vec![took(&[&self.entity], self.kind)])
    }
}

/// A generated command, on entities numbered within its case.
#[derive(Debug, Clone)]
enum Cmd {
    Take { e: u8, kind: u8, max: u32 },
    Pair { a: u8, b: u8, kind: u8, max: u32 },
    Mixed { e: u8, kind: u8, max: u32 },
}

#[derive(Debug, Clone)]
struct Wave {
    /// Events another writer appends before the wave: (entity, kind).
    between: Vec<(u8, u8)>,
    all_at_once: bool,
    commands: Vec<Cmd>,
}

#[derive(Debug, Clone)]
struct Case {
    history: Vec<(u8, u8)>,
    waves: Vec<Wave>,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let e = 0..ENTITIES;
    let kind = 0..KINDS;
    let max = 1..=3u32;
    prop_oneof![
        (e.clone(), kind.clone(), max.clone()).prop_map(|(e, kind, max)| Cmd::Take {
            e,
            kind,
            max
        }),
        (e.clone(), e.clone(), kind.clone(), max.clone()).prop_map(|(a, b, kind, max)| Cmd::Pair {
            a,
            b,
            kind,
            max
        }),
        (e, kind, max).prop_map(|(e, kind, max)| Cmd::Mixed { e, kind, max }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let event = (0..ENTITIES, 0..KINDS);
    let wave = (vec(event.clone(), 0..3), any::<bool>(), vec(cmd(), 1..8)).prop_map(
        |(between, all_at_once, commands)| Wave {
            between,
            all_at_once,
            commands,
        },
    );
    (vec(event, 0..6), vec(wave, 1..4)).prop_map(|(history, waves)| Case { history, waves })
}

/// What the runtime answered, whatever the decision.
#[derive(Debug)]
enum Outcome {
    Committed(Committed),
    Rejected,
    Other(String),
}

fn outcome<R: std::fmt::Debug>(answer: Result<Committed, ExecuteError<R>>) -> Outcome {
    match answer {
        Ok(committed) => Outcome::Committed(committed),
        Err(ExecuteError::Rejected(_)) => Outcome::Rejected,
        Err(e) => Outcome::Other(format!("{e:?}")),
    }
}

type Submitted<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One case's commands and events, its entities named apart from every other case's.
struct Named {
    prefix: String,
}

impl Named {
    fn entity(&self, e: u8) -> String {
        format!("{}e{e}", self.prefix)
    }

    fn event(&self, (e, kind): (u8, u8)) -> Event {
        took(&[&self.entity(e)], kind)
    }

    fn query(&self) -> Query {
        (0..ENTITIES)
            .map(|e| took_query(&self.entity(e)))
            .reduce(|a, b| dcb_runtime::union(&a, &b))
            .expect("entities")
    }

    fn submit<'a, S: EventStore + 'static>(
        &self,
        runtime: &'a Runtime<S>,
        cmd: &Cmd,
    ) -> Submitted<'a> {
        match *cmd {
            Cmd::Take { e, kind, max } => {
                let d = Take {
                    entity: self.entity(e),
                    kind,
                    max,
                };
                Box::pin(async move { outcome(runtime.execute(d).await) })
            }
            Cmd::Pair { a, b, kind, max } => {
                let d = Pair {
                    a: self.entity(a),
                    b: self.entity(b),
                    kind,
                    max,
                };
                Box::pin(async move { outcome(runtime.execute(d).await) })
            }
            Cmd::Mixed { e, kind, max } => {
                let d = Mixed {
                    entity: self.entity(e),
                    kind,
                    max,
                };
                Box::pin(async move { outcome(runtime.execute(d).await) })
            }
        }
    }

    /// The pure decision on `history`.
    fn pure(&self, cmd: &Cmd, history: Vec<Event>) -> Result<Vec<Event>, ()> {
        let given = given(history);
        match *cmd {
            Cmd::Take { e, kind, max } => given.when(Take {
                entity: self.entity(e),
                kind,
                max,
            }),
            Cmd::Pair { a, b, kind, max } => {
                return given
                    .when(Pair {
                        a: self.entity(a),
                        b: self.entity(b),
                        kind,
                        max,
                    })
                    .into_result();
            }
            Cmd::Mixed { e, kind, max } => {
                return given
                    .when(Mixed {
                        entity: self.entity(e),
                        kind,
                        max,
                    })
                    .into_result();
            }
        }
        .into_result()
    }
}

/// Type, tags and payload: what a decision decides (ids are fresh each time).
fn shape(event: &Event) -> (String, Vec<String>, Value) {
    (
        event.event_type().to_owned(),
        event.tags().iter().map(ToString::to_string).collect(),
        event.payload().clone(),
    )
}

async fn stored<S: EventStore>(store: &S, query: &Query) -> Vec<SequencedEvent> {
    store
        .read(query, ReadOptions::default())
        .await
        .expect("read")
        .events
}

fn before(events: &[SequencedEvent], position: i64) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.position.get() < position)
        .map(|e| e.event.clone())
        .collect()
}

fn all(events: &[SequencedEvent]) -> Vec<Event> {
    events.iter().map(|e| e.event.clone()).collect()
}

/// Checks one answer against the pure decision: a commit on what was stored before its events,
/// a rejection on all of `now`.
fn judge(
    named: &Named,
    cmd: &Cmd,
    answer: &Outcome,
    now: &[SequencedEvent],
    seen: &Seen,
) -> Result<(), TestCaseError> {
    match answer {
        Outcome::Committed(committed) => {
            seen.committed.fetch_add(1, Ordering::SeqCst);
            let first = committed.positions.first().map_or(i64::MAX, |p| p.get());
            let expected = named.pure(cmd, before(now, first));
            let got: Vec<_> = committed.events.iter().map(shape).collect();
            prop_assert_eq!(
                expected.map(|events| events.iter().map(shape).collect::<Vec<_>>()),
                Ok(got),
                "{:?} committed at {}",
                cmd,
                first
            );
        }
        Outcome::Rejected => {
            seen.rejected.fetch_add(1, Ordering::SeqCst);
            prop_assert_eq!(
                named.pure(cmd, all(now)),
                Err(()),
                "{:?} was rejected, which the history does not justify",
                cmd
            );
        }
        Outcome::Other(e) => prop_assert!(false, "{:?} answered {}", cmd, e),
    }
    Ok(())
}

async fn check<S: EventStore + 'static>(
    runtime: &Runtime<S>,
    named: &Named,
    case: &Case,
    seen: &Seen,
) -> Result<(), TestCaseError> {
    let store = runtime.store();
    let query = named.query();
    let mut appended_directly = case.history.len();
    let history: Vec<Event> = case.history.iter().map(|&e| named.event(e)).collect();
    if !history.is_empty() {
        store.append(history).await.expect("history");
    }
    let mut committed_events = 0;
    for wave in &case.waves {
        for &e in &wave.between {
            store
                .append(vec![named.event(e)])
                .await
                .expect("other writer");
            appended_directly += 1;
        }
        if wave.all_at_once {
            let submitted =
                poll_each_once(wave.commands.iter().map(|c| named.submit(runtime, c))).await;
            let answers = finish(submitted).await;
            let now = stored(store, &query).await;
            for (cmd, answer) in wave.commands.iter().zip(&answers) {
                judge(named, cmd, answer, &now, seen)?;
                if let Outcome::Committed(c) = answer {
                    committed_events += c.events.len();
                }
            }
        } else {
            for cmd in &wave.commands {
                let answer = named.submit(runtime, cmd).await;
                // Alone in flight: a rejection was decided on exactly what is stored now.
                let now = stored(store, &query).await;
                judge(named, cmd, &answer, &now, seen)?;
                if let Outcome::Committed(c) = &answer {
                    committed_events += c.events.len();
                }
            }
        }
    }
    let now = stored(store, &query).await;
    prop_assert_eq!(
        now.len(),
        appended_directly + committed_events,
        "exactly the committed commands' events are stored"
    );
    Ok(())
}

/// Answers seen, over all cases of a test: the generators must reach both sides of the rules.
#[derive(Default)]
struct Seen {
    committed: AtomicU32,
    rejected: AtomicU32,
}

fn run_cases<S: EventStore + 'static>(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime<S>,
    cases: u32,
) {
    static CASE: AtomicU32 = AtomicU32::new(0);
    let seen = Seen::default();
    let mut runner = TestRunner::new(Config {
        cases,
        // Cases share one runtime (warm state carries over, as in a service): no file of
        // failures to replay, shrinking reruns a case under fresh entity names.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let outcome = runner.run(&case(), |case| {
        let named = Named {
            prefix: format!("c{}-", CASE.fetch_add(1, Ordering::SeqCst)),
        };
        rt.block_on(check(runtime, &named, &case, &seen))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let (committed, rejected) = (
        seen.committed.load(Ordering::SeqCst),
        seen.rejected.load(Ordering::SeqCst),
    );
    assert!(
        committed >= cases && rejected >= cases,
        "{committed} commits, {rejected} rejections in {cases} cases"
    );
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

#[test]
fn on_postgres_the_runtime_decides_what_the_pure_decision_decides() {
    let rt = tokio_runtime();
    let db = rt.block_on(TestDatabase::create()).expect("test database");
    let runtime = rt
        .block_on(async { Runtime::builder(db.store().await?).actors(2).start().await })
        .expect("runtime");
    run_cases(&rt, &runtime, 24);
    rt.block_on(runtime.shutdown());
}

#[test]
fn in_memory_the_runtime_decides_what_the_pure_decision_decides() {
    let rt = tokio_runtime();
    let runtime = rt
        .block_on(RuntimeBuilder::new(MemoryStore::new()).actors(2).start())
        .expect("runtime");
    run_cases(&rt, &runtime, 128);
    rt.block_on(runtime.shutdown());
}
