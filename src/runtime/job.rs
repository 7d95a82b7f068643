//! A command on its way through the runtime, with the decision's types erased.

use std::any::{Any, TypeId};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use super::Committed;
use crate::decision::{Decision, Leaf, Projection};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent};
use crate::query::Query;

/// A projection's state, with its type erased.
pub(crate) type State = Box<dyn Any + Send>;

/// What a command actor can do with any decision. Everything that runs user code catches panics.
pub(crate) trait ErasedCommand: Send + Sync {
    fn name(&self) -> &'static str;
    fn read_query(&self) -> &Query;
    fn condition_query(&self) -> &Query;
    /// The keys it holds while it runs, sorted, without repeats ([`Decision::consistency_keys`]).
    fn keys(&self) -> &[u64];
    /// The projection's type; commands whose projections are equal leaf by leaf (see
    /// [`ErasedCommand::parts`]) fold the same state.
    fn state_kind(&self) -> TypeId;
    fn initial_state(&self) -> Result<State, String>;
    /// The leaf projections of its projection (see [`Projection::parts`]).
    fn parts(&self) -> &[Leaf];
    /// Applies to each leaf the events it matches after the position it has `seen` (one per
    /// part; the caller may pass more events).
    fn fold(
        &self,
        state: &mut State,
        events: &[SequencedEvent],
        seen: &[Option<Position>],
    ) -> Result<(), String>;
    /// A copy of the state as its leaves' states.
    fn split(&self, state: &State) -> Result<Vec<State>, String>;
    /// A copy of the state made of its leaves' states (`None` if they are not this
    /// projection's leaves).
    fn join(&self, parts: &[&State]) -> Result<Option<State>, String>;
    fn decide(&self, state: &State) -> Decided;
}

/// The outcome of `decide`, with the rejection boxed and a panic caught.
pub(crate) enum Decided {
    Events(Vec<Event>),
    Rejected(Box<dyn Any + Send>),
    Panicked(String),
}

pub(crate) struct Command<D: Decision> {
    decision: D,
    projection: D::Projection,
    read_query: Query,
    condition_query: Query,
    keys: Vec<u64>,
    parts: Vec<Leaf>,
    /// The idempotency key: the decided events get ids derived from it.
    key: Option<String>,
}

/// The keys a command of `decision` holds (see [`Command::keys`]), without building it.
pub(crate) fn keys_of<D: Decision>(decision: &D) -> Vec<u64> {
    let read_query = decision.projection().query();
    let mut keys = decision.consistency_keys(&decision.condition_query(&read_query));
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl<D: Decision> Command<D> {
    pub(crate) fn new(decision: D, key: Option<String>) -> Self {
        let projection = decision.projection();
        let read_query = projection.query();
        let condition_query = decision.condition_query(&read_query);
        let mut keys = decision.consistency_keys(&condition_query);
        keys.sort_unstable();
        keys.dedup();
        let parts = projection.parts();
        Self {
            decision,
            projection,
            read_query,
            condition_query,
            keys,
            parts,
            key,
        }
    }

    pub(crate) fn key(&self) -> u64 {
        self.decision.consistency_key(&self.read_query)
    }
}

type ProjectionState<D> = <<D as Decision>::Projection as Projection>::State;

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| panic_message(panic.as_ref()))
}

fn typed<D: Decision>(state: &State) -> &ProjectionState<D> {
    state
        .downcast_ref::<ProjectionState<D>>()
        .expect("states are grouped by state kind")
}

impl<D: Decision> ErasedCommand for Command<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn read_query(&self) -> &Query {
        &self.read_query
    }

    fn condition_query(&self) -> &Query {
        &self.condition_query
    }

    fn keys(&self) -> &[u64] {
        &self.keys
    }

    fn state_kind(&self) -> TypeId {
        TypeId::of::<D::Projection>()
    }

    fn initial_state(&self) -> Result<State, String> {
        guarded(|| Box::new(self.projection.initial_state()) as State)
    }

    fn parts(&self) -> &[Leaf] {
        &self.parts
    }

    fn fold(
        &self,
        state: &mut State,
        events: &[SequencedEvent],
        seen: &[Option<Position>],
    ) -> Result<(), String> {
        let state = state
            .downcast_mut::<ProjectionState<D>>()
            .expect("states are grouped by state kind");
        guarded(|| {
            self.projection.fold_parts(state, events, &self.parts, seen);
        })
    }

    fn split(&self, state: &State) -> Result<Vec<State>, String> {
        guarded(|| {
            let mut parts = Vec::with_capacity(self.parts.len());
            self.projection
                .split_state(typed::<D>(state).clone(), &mut parts);
            parts
        })
    }

    fn join(&self, parts: &[&State]) -> Result<Option<State>, String> {
        guarded(|| {
            self.projection
                .join_state(&mut parts.iter().copied())
                .map(|state| Box::new(state) as State)
        })
    }

    fn decide(&self, state: &State) -> Decided {
        // A panicking decision fails its own command; the actor that ran it is restarted.
        match guarded(|| self.decision.decide(typed::<D>(state))) {
            Ok(Ok(events)) => match &self.key {
                None => Decided::Events(events),
                Some(key) => Decided::Events(
                    events
                        .into_iter()
                        .enumerate()
                        .map(|(i, e)| e.with_id(keyed_event_id(D::NAME, key, i)))
                        .collect(),
                ),
            },
            Ok(Err(rejection)) => Decided::Rejected(Box::new(rejection)),
            Err(message) => Decided::Panicked(message),
        }
    }
}

/// The id of the `index`-th event decided by decision `decision` ([`Decision::NAME`]) executed
/// under idempotency key `key` with [`crate::Runtime::execute_with_key`]. A second execution
/// decides events with the same ids, which the store stores once (the same content is a replay
/// answering the original positions; other content is refused as a duplicate id). Known before
/// the command runs, so a caller can look its outcome up in the `events` table.
pub fn keyed_event_id(decision: &str, key: &str, index: usize) -> uuid::Uuid {
    /// The namespace of dcb-runtime's keyed event ids (a fixed, random UUID).
    const NAMESPACE: uuid::Uuid = uuid::uuid!("5b0f6c39-9d3e-4c55-8f4e-0d6f2a7c9e11");
    let name = format!("{decision}\u{0}{key}\u{0}{index}");
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "decide panicked".to_owned())
}

/// How a job ended, as sent back to the caller.
pub(crate) enum JobOutcome {
    Committed(Committed),
    Rejected(Box<dyn Any + Send>),
    ConflictsExhausted { attempts: u32 },
    Timeout,
    Panicked(String),
    Failed(AppendError),
}

/// A command queued on or running in a command actor. Dropped unanswered (its actor died), it
/// answers nothing, which tells the caller the job never ran and is safe to submit again; either
/// way it leaves its actor's queue count.
pub(crate) struct Job {
    pub(crate) command: Arc<dyn ErasedCommand>,
    pub(crate) attempts: u32,
    /// Conflicts that cost no attempt: with another runtime (the retry waits for its turn), or
    /// met by a chain decided without a read (the retry reads).
    pub(crate) free_retries: u32,
    /// Transient store failures met so far, and the last one (answered if the deadline passes).
    pub(crate) transient_failures: u32,
    pub(crate) last_failure: Option<StoreError>,
    /// Run alone at its next turn (after a conflict or failure of the chain it was in).
    pub(crate) solo: bool,
    /// Backing off: not to run before this instant.
    pub(crate) not_before: Option<Instant>,
    /// Its events went out in an append whose outcome is unknown: it must not be decided again
    /// (with fresh event ids it could be stored twice), so it is never dropped unanswered.
    pub(crate) maybe_stored: bool,
    pub(crate) deadline: Instant,
    reply: Option<oneshot::Sender<JobOutcome>>,
    queued: Arc<AtomicUsize>,
}

impl Job {
    pub(crate) fn new(
        command: Arc<dyn ErasedCommand>,
        deadline: Instant,
        reply: oneshot::Sender<JobOutcome>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            command,
            attempts: 0,
            free_retries: 0,
            transient_failures: 0,
            last_failure: None,
            solo: false,
            not_before: None,
            maybe_stored: false,
            deadline,
            reply: Some(reply),
            queued,
        }
    }

    /// Notes a transient store failure; the failures met so far.
    pub(crate) fn failed(&mut self, error: &StoreError) -> u32 {
        self.transient_failures += 1;
        self.last_failure = Some(error.clone());
        self.transient_failures
    }

    pub(crate) fn answer(mut self, outcome: JobOutcome) {
        self.reply_with(Some(outcome));
    }

    /// Leaves the queue first, so a caller answered at full capacity can submit again at once.
    fn reply_with(&mut self, outcome: Option<JobOutcome>) {
        if let Some(reply) = self.reply.take() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            // The caller may have given up waiting; nothing to do then. Without an outcome the
            // sender is dropped: the caller sees the job never ran.
            if let Some(outcome) = outcome {
                let _ = reply.send(outcome);
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let outcome = self.maybe_stored.then(|| {
            let e = self.last_failure.take().unwrap_or(StoreError::AnswerLost);
            JobOutcome::Failed(AppendError::Store(e))
        });
        self.reply_with(outcome);
    }
}
