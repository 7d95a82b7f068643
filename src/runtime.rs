//! The decision runtime: command actors (ractor) run decisions against the store, routed by
//! consistency key, with back-off on conflicts, bounded queues, a supervisor and metrics.

mod after_append;
mod command_actor;
mod forwarding;
mod in_flight;
mod job;
mod leases;
mod outcome;
mod overlap;
mod supervisor;
mod turnstile;
mod warm_cache;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use crate::decision::Decision;
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent};
use crate::limits::ValidationError;
use crate::metrics as names;
use crate::store::{EventStore, PostgresStore};
use command_actor::CommandMsg;
use forwarding::{Codec, FORWARD_WAIT, Forwarded, Forwarding};
pub use job::keyed_event_id;
use job::{Command, ErasedCommand, Job, JobOutcome, keys_of};
use leases::Leases;
pub use outcome::CommandOutcome;
use overlap::Overlap;
use supervisor::{Slot, Supervisor, SupervisorMsg};
use turnstile::Turnstile;

/// How conflicts are retried: exponential back-off with full jitter, bounded attempts, and a
/// deadline for the whole command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Appends tried before giving up with [`ExecuteError::ConflictsExhausted`] (default 10).
    pub max_attempts: u32,
    /// Upper bound of the first back-off (default 1 ms); it doubles with each conflict.
    pub base_delay: Duration,
    /// Largest back-off after a conflict (default 100 ms); after a transient store error the
    /// back-off goes up to ten times this.
    pub max_delay: Duration,
    /// Time from submission after which a command answers [`ExecuteError::Timeout`] (default 10 s).
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(100),
            deadline: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in `[0, min(max_delay, base_delay * 2^(attempt-1))]`.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.jittered(attempt, self.max_delay)
    }

    /// After a transient store error: the same curve, capped at ten times `max_delay`.
    pub(crate) fn fault_delay(&self, failures: u32) -> Duration {
        self.jittered(failures, self.max_delay.saturating_mul(10))
    }

    fn jittered(&self, attempt: u32, cap: Duration) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exp.min(cap).mul_f64(fastrand::f64())
    }
}

/// A committed command: its events and where they were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// One position per event, in order (empty when the decision decided nothing).
    pub positions: Vec<Position>,
    /// The events decided.
    pub events: Vec<Event>,
    /// Appends it took (1 without conflict; 0 for a replay).
    pub attempts: u32,
    /// The command had already been committed under its idempotency key by another execution
    /// (see [`Runtime::execute_with_key`]): `positions` and `events` are that execution's.
    /// Exactly one execution of a key answers `false`: the one whose append stored the events
    /// (the store records an append id with them, so a re-sent append whose first answer was
    /// lost still knows whether it stored them itself), whichever runtime ran the others (tested
    /// with two runtimes on separate pools in one test process, not with two OS processes).
    pub replayed: bool,
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<R> {
    /// The decision refused the command (a business rule).
    #[error("the command was rejected")]
    Rejected(R),
    /// Every attempt met a conflicting append; see [`RetryPolicy::max_attempts`].
    #[error("gave up after {attempts} conflicting attempts")]
    ConflictsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The command's actor queue was full; nothing was done. Retry later.
    #[error("the runtime is overloaded")]
    Overloaded,
    /// The deadline passed before the command completed; nothing was stored.
    #[error("the command missed its deadline")]
    Timeout,
    /// The decision panicked; its actor was restarted.
    #[error("the decision panicked: {0}")]
    Panicked(String),
    /// The decision produced invalid events.
    #[error(transparent)]
    Invalid(ValidationError),
    /// The decision produced an event whose id is already stored with other content.
    #[error("event id {0} is already stored")]
    DuplicateEventId(Uuid),
    /// The database failed; see [`StoreError::is_transient`].
    #[error(transparent)]
    Store(StoreError),
    /// The runtime is shutting down and takes no new commands.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

impl<R> ExecuteError<R> {
    /// What this error counts as in `dcb_commands_total{outcome}`.
    pub fn outcome(&self) -> CommandOutcome {
        match self {
            ExecuteError::Rejected(_) => CommandOutcome::Rejected,
            ExecuteError::ConflictsExhausted { .. } => CommandOutcome::ConflictExhausted,
            ExecuteError::Overloaded => CommandOutcome::Overloaded,
            ExecuteError::ShuttingDown => CommandOutcome::ShuttingDown,
            ExecuteError::Timeout => CommandOutcome::Timeout,
            ExecuteError::Panicked(_)
            | ExecuteError::Invalid(_)
            | ExecuteError::DuplicateEventId(_)
            | ExecuteError::Store(_) => CommandOutcome::Error,
        }
    }
}

/// The default number of command actors: half the cores available to the process, at least one
/// (one on 2 cores). Fewer actors make longer chains: fewer reads, fewer and larger appends, and
/// fewer transactions, which is what several processes on one database wait for each other on
/// (each transaction holds the store's commit-order lock through its commit). Measured on 2
/// cores at 64 callers, one actor matched or beat two and four in every scenario, by most with
/// several processes (the README's "Performance"). More actors overlap reads and decisions: worth it with hundreds of commands in
/// flight per process (at 256 callers four actors ran 1.1-1.4x one, whose chains stop at
/// `max_chain`), or when one actor's CPU is the limit.
pub fn default_actors() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The actor slot of a command with routing key `key` and consistency keys `keys`, of `slots`.
///
/// A command routes by its key. One whose keys belong to several actors (a transfer between
/// accounts of two actors) goes to the first actor instead while `gather` says such commands
/// overlap densely (see `overlap.rs`): there they chain, decided one after the other on one warm
/// state, in one read and one append, instead of taking turns on their keys with the commands of
/// other actors chain by chain. The turnstile keeps them from racing with the commands of the
/// other actors either way.
fn route(key: u64, keys: &[u64], slots: usize, gather: impl FnOnce() -> bool) -> usize {
    let slots = u64::try_from(slots).unwrap_or(1).max(1);
    let slot_of = |k: u64| usize::try_from(k % slots).unwrap_or(0);
    match keys.split_first() {
        Some((first, rest)) if rest.iter().any(|&k| slot_of(k) != slot_of(*first)) && gather() => 0,
        _ => slot_of(key),
    }
}

/// Configures and starts a [`Runtime`].
#[derive(Debug)]
#[must_use]
pub struct RuntimeBuilder<S> {
    store: S,
    actors: usize,
    queue_capacity: usize,
    policy: RetryPolicy,
    max_chain: usize,
    leases: Option<Leases>,
    /// Decisions that may be forwarded to the process owning their key, by name.
    forwarded: HashMap<&'static str, Codec<S>>,
    /// Where this process takes commands forwarded to it.
    forward_address: SocketAddr,
}

impl Runtime<PostgresStore> {
    /// A builder for a runtime on this store. The store's builder sets the pool's size and
    /// timeouts ([`PostgresStore::builder`]).
    ///
    /// Runtimes in several processes on one database take turns on the keys they contend for
    /// (found when another process's append fails a condition): see "How it works" in the
    /// README.
    pub fn builder(store: PostgresStore) -> RuntimeBuilder<PostgresStore> {
        let leases = Leases::new(store.clone());
        RuntimeBuilder {
            leases: Some(leases),
            ..RuntimeBuilder::new(store)
        }
    }
}

impl RuntimeBuilder<PostgresStore> {
    /// Lets commands of `D` run in the process that owns their key while other processes
    /// contend for it, so that a hot boundary is decided in one process's chains whichever
    /// process its callers are in (see "How it works" in the README). The decision crosses
    /// between processes as JSON, so every process must register `D` under the same
    /// [`Decision::NAME`]. Only commands holding one key are forwarded. A forwarded command runs
    /// under an idempotency key (the caller's, or a fresh one), so its events get ids derived
    /// from that key (replacing ids the decision set with [`Event::with_id`]); when the owner
    /// does not answer within half a second, or did not commit it, this process runs it itself,
    /// and it is committed once either way.
    pub fn forward<D>(mut self) -> Self
    where
        D: Decision + serde::Serialize + serde::de::DeserializeOwned,
    {
        self.forwarded.insert(D::NAME, Codec::of::<D>());
        self
    }

    /// Where this process takes the commands other processes forward to it, over TCP (default
    /// `127.0.0.1:0`: a free port on the loopback interface, which serves processes on one
    /// host). Processes on several hosts need an address the others reach; it is advertised
    /// as given (with the port bound, for port 0) through this process's database session, so
    /// it must be a specific IP address, not `0.0.0.0`. The listener opens only once a key is
    /// contended. Only who can query the database finds out the token a sender must present.
    pub fn forward_address(mut self, address: SocketAddr) -> Self {
        self.forward_address = address;
        self
    }
}

impl<S: EventStore + 'static> RuntimeBuilder<S> {
    /// A builder for a runtime on any store (for example a [`crate::MemoryStore`] in tests).
    pub fn new(store: S) -> Self {
        Self {
            store,
            actors: default_actors(),
            queue_capacity: 1024,
            policy: RetryPolicy::default(),
            max_chain: 64,
            leases: None,
            forwarded: HashMap::new(),
            forward_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Command actors (default [`default_actors`]: half the available cores, at least 1);
    /// commands are spread over them by consistency key.
    pub fn actors(mut self, actors: usize) -> Self {
        self.actors = actors;
        self
    }

    /// Commands one actor may hold, queued or running (default 1024; at least 1); beyond it
    /// `execute` answers [`ExecuteError::Overloaded`] at once.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Appends tried per command before [`ExecuteError::ConflictsExhausted`] (default 10; at
    /// least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Back-off bounds: the first delay is at most `base`, doubling up to `cap` (defaults 1 ms,
    /// 100 ms; `cap` at least `base`).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.policy.base_delay = base;
        self.policy.max_delay = cap;
        self
    }

    /// Time a command may take from submission (default 10 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = deadline;
        self
    }

    /// Most queued commands an actor decides and appends together (default 64; at least 1).
    pub fn max_chain(mut self, commands: usize) -> Self {
        self.max_chain = commands;
        self
    }

    /// Starts the supervisor and the command actors.
    ///
    /// # Errors
    ///
    /// [`StoreError::Setting`] for a count of 0 or a back-off cap below its base;
    /// [`StoreError::Closed`] if the actors could not be spawned.
    pub async fn start(self) -> Result<Runtime<S>, StoreError> {
        self.check()?;
        names::describe();
        // A restart counter that never moved is still a series: "0 restarts", not "no data".
        metrics::counter!(names::ACTOR_RESTARTS_TOTAL).increment(0);
        for source in ["other_process", "same_process"] {
            metrics::counter!(names::APPEND_CONFLICTS_TOTAL, "source" => source).increment(0);
        }
        if self.leases.is_some() {
            for event in ["taken", "handed_over", "lost"] {
                metrics::counter!(names::LEASES_TOTAL, "event" => event).increment(0);
            }
            metrics::gauge!(names::LEASED_KEYS).set(0.0);
        }
        let store = Arc::new(self.store);
        let turnstile = Arc::new(Turnstile::default());
        let leases = self.leases.map(Arc::new);
        let forwarding = match &leases {
            Some(leases) if !self.forwarded.is_empty() => {
                for event in ["taken", "given_back"] {
                    metrics::counter!(names::OWNERSHIPS_TOTAL, "event" => event).increment(0);
                }
                metrics::counter!(names::FORWARDED_COMMANDS_SERVED_TOTAL).increment(0);
                for &decision in self.forwarded.keys() {
                    for outcome in ["committed", "run_here", "no_answer"] {
                        metrics::counter!(names::FORWARDED_COMMANDS_TOTAL, "decision" => decision, "outcome" => outcome)
                            .increment(0);
                    }
                }
                metrics::gauge!(names::OWNED_KEYS).set(0.0);
                Some(Arc::new(Forwarding::new(
                    self.forwarded,
                    leases.clone(),
                    self.forward_address,
                )))
            }
            _ => None,
        };
        let supervisor = Supervisor {
            store: store.clone(),
            policy: self.policy,
            max_chain: self.max_chain,
            actors: self.actors,
            turnstile: turnstile.clone(),
            leases,
        };
        let (ready, slots) = oneshot::channel();
        let (supervisor, _) = Actor::spawn(None, supervisor, ready).await.map_err(|e| {
            tracing::error!(error = %e, "could not start the supervisor");
            StoreError::Closed
        })?;
        let slots = slots.await.map_err(|_| StoreError::Closed)?;
        let inner = Arc::new(Inner {
            slots,
            supervisor,
            capacity: self.queue_capacity,
            policy: self.policy,
            closing: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            store,
            turnstile,
            overlap: Overlap::default(),
            forwarding,
        });
        if let Some(forwarding) = &inner.forwarding {
            forwarding.start(Arc::downgrade(&inner));
        }
        Ok(Runtime { inner })
    }
}

impl<S> RuntimeBuilder<S> {
    /// Refuses settings the runtime cannot work with, as the builder was given them.
    fn check(&self) -> Result<(), StoreError> {
        StoreError::at_least_one("actors", self.actors)?;
        StoreError::at_least_one("queue_capacity", self.queue_capacity)?;
        StoreError::at_least_one("max_chain", self.max_chain)?;
        StoreError::at_least_one("max_attempts", self.policy.max_attempts)?;
        if self.forward_address.ip().is_unspecified() {
            return Err(StoreError::Setting {
                name: "forward_address",
                value: self.forward_address.to_string(),
                requirement: "an address other processes can connect to (not 0.0.0.0 or ::)",
            });
        }
        if self.policy.max_delay < self.policy.base_delay {
            return Err(StoreError::Setting {
                name: "backoff",
                value: format!("{:?}, {:?}", self.policy.base_delay, self.policy.max_delay),
                requirement: "a cap at least the base delay",
            });
        }
        Ok(())
    }
}

/// A running decision runtime. Cheap to clone; all clones share the actors.
pub struct Runtime<S: EventStore + 'static = PostgresStore> {
    inner: Arc<Inner<S>>,
}

impl<S: EventStore + 'static> Clone for Runtime<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: EventStore + 'static> std::fmt::Debug for Runtime<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("actors", &self.inner.slots.len())
            .field("inflight", &self.inner.inflight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    slots: Arc<[Slot]>,
    supervisor: ActorRef<SupervisorMsg>,
    capacity: usize,
    policy: RetryPolicy,
    closing: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
    store: Arc<S>,
    turnstile: Arc<Turnstile>,
    overlap: Overlap,
    forwarding: Option<Arc<Forwarding<S>>>,
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(forwarding) = &self.forwarding {
            forwarding.stop();
        }
    }
}

/// Who asks `run` for a command, which decides whether a runtime shutting down takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// A caller of `execute`: refused once the shutdown began.
    Caller,
    /// A caller's command already counted in flight (forwarded, and now run here): never
    /// refused.
    Accepted,
    /// Another process's, forwarded here as to the owner of its key: refused once this runtime
    /// gave its keys back.
    Served,
}

/// Counts a command in flight for as long as it lives.
struct InFlight<'a, S>(&'a Inner<S>);

impl<'a, S> InFlight<'a, S> {
    fn enter(inner: &'a Inner<S>) -> Self {
        inner.inflight.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(names::INFLIGHT_COMMANDS).increment(1.0);
        Self(inner)
    }
}

impl<S> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        metrics::gauge!(names::INFLIGHT_COMMANDS).decrement(1.0);
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl<S: EventStore + 'static> Runtime<S> {
    /// Commands inside `execute` right now (the `dcb_inflight_commands` gauge).
    pub fn inflight(&self) -> usize {
        self.inner.inflight.load(Ordering::SeqCst)
    }

    /// The store the runtime appends to.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Runs the decision: read its boundary, fold, decide, append if the boundary did not
    /// change, retrying on conflicts and, until the deadline, on transient store errors (a lost
    /// connection, a restarting server, a timeout). An append whose outcome was unknown is
    /// re-sent as it was (same event ids), so it is stored once.
    ///
    /// # Errors
    ///
    /// [`ExecuteError::Rejected`] with the decision's reason; [`ExecuteError::Overloaded`] at once
    /// when the actor's queue is full; [`ExecuteError::ConflictsExhausted`],
    /// [`ExecuteError::Timeout`], [`ExecuteError::Panicked`], or a store error.
    pub async fn execute<D: Decision>(
        &self,
        decision: D,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        self.execute_keyed(decision, None).await
    }

    /// [`Runtime::execute`], safe to call again with the same `key` after any outcome, such as a
    /// timeout or a lost answer: the command is committed at most once. The decided events get
    /// ids derived from the decision's name and the key, so the store keeps one copy; when an
    /// execution finds that an earlier one under the same key committed, it answers that one's
    /// positions and events with [`Committed::replayed`] set. Keys are per decision type
    /// ([`Decision::NAME`]); keep them unique (a request id, an idempotency header).
    ///
    /// # Errors
    ///
    /// As [`Runtime::execute`]; a rejection, a conflict or an error is answered only when no
    /// earlier execution under the key was committed.
    pub async fn execute_with_key<D: Decision>(
        &self,
        key: impl Into<String>,
        decision: D,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        self.execute_keyed(decision, Some(key.into())).await
    }

    async fn execute_keyed<D: Decision>(
        &self,
        decision: D,
        key: Option<String>,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        let started = Instant::now();
        let deadline = started + self.inner.policy.deadline;
        let result = match &self.inner.forwarding {
            Some(forwarding) if forwarding.forwards(D::NAME) => {
                self.forward_or_decide(forwarding, decision, key, deadline)
                    .await
            }
            _ => {
                self.decide_keyed(decision, key, deadline, Admission::Caller)
                    .await
            }
        };
        metrics::histogram!(names::COMMAND_DURATION_SECONDS, "decision" => D::NAME)
            .record(started.elapsed());
        // Counted once, here, as the caller is answered (after the keyed fix-up), and only in
        // the caller's process (a command served for another process is counted there).
        let outcome = CommandOutcome::of(&result).label();
        metrics::counter!(names::COMMANDS_TOTAL, "decision" => D::NAME, "outcome" => outcome)
            .increment(1);
        result
    }

    /// Sends the command to the process owning its key, if another process owns it; runs it
    /// here when that one answers that it did not commit it, or does not answer in time.
    async fn forward_or_decide<D: Decision>(
        &self,
        forwarding: &Arc<Forwarding<S>>,
        decision: D,
        key: Option<String>,
        deadline: Instant,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        let keys = keys_of(&decision);
        let destination = match keys[..] {
            [one] => forwarding.destination(&decision, one).await,
            _ => None,
        };
        let Some((owner, command)) = destination else {
            return self
                .decide_keyed(decision, key, deadline, Admission::Caller)
                .await;
        };
        // In flight from here (as `run` counts): a shutdown waits for it, and its fallback runs
        // even if the shutdown began meanwhile.
        let _inflight = InFlight::enter(&self.inner);
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(ExecuteError::ShuttingDown);
        }
        // Wherever it runs, it runs under this key: committed once.
        let idempotency_key = key.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
        let forwarded = forwarding
            .forward(owner, D::NAME, keys[0], &idempotency_key, command, deadline)
            .await;
        let here = |decision| {
            self.decide_keyed(
                decision,
                Some(idempotency_key.clone()),
                deadline,
                Admission::Accepted,
            )
        };
        let mut result = match forwarded {
            Forwarded::Committed(committed) => Ok(committed),
            Forwarded::NotCommitted => here(decision).await,
            Forwarded::NoAnswer => {
                let result = here(decision).await;
                if result.is_ok() {
                    result
                } else {
                    // The owner may have decided it before its own deadline (`OWNER_BUDGET`)
                    // and be committing it still: look for that once more, after the time a
                    // commit takes at worst in practice, before answering a failure.
                    tokio::time::sleep(FORWARD_WAIT).await;
                    match self
                        .earlier_execution(D::NAME, &idempotency_key, deadline)
                        .await
                    {
                        Ok(Some(committed)) => Ok(committed),
                        Ok(None) => result,
                        Err(e) => Err(ExecuteError::Store(e)),
                    }
                }
            }
        };
        if key.is_none()
            && let Ok(committed) = &mut result
        {
            // A key of our own making: to the caller, this is the one execution.
            committed.replayed = false;
        }
        result
    }

    /// Runs the decision here, under `key` if given (see [`Runtime::execute_with_key`]), by
    /// `deadline`.
    async fn decide_keyed<D: Decision>(
        &self,
        decision: D,
        key: Option<String>,
        deadline: Instant,
        admission: Admission,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        let mut result = self.run(decision, key.clone(), deadline, admission).await;
        if let Some(key) = &key {
            // Refused, out of attempts, failed, deciding nothing or a replay: maybe because an
            // earlier execution under this key was committed (its events are in the state now,
            // or its ids are taken). Answer that execution, whole.
            let earlier = match &result {
                Ok(committed) => committed.replayed || committed.events.is_empty(),
                Err(e) => matches!(
                    e,
                    ExecuteError::Rejected(_)
                        | ExecuteError::DuplicateEventId(_)
                        | ExecuteError::ConflictsExhausted { .. }
                        | ExecuteError::Store(_)
                        | ExecuteError::Timeout
                        | ExecuteError::Panicked(_)
                        | ExecuteError::Overloaded
                        | ExecuteError::ShuttingDown
                ),
            };
            if earlier {
                match self.earlier_execution(D::NAME, key, deadline).await {
                    Ok(Some(committed)) => result = Ok(committed),
                    Ok(None) => {}
                    // Whether an earlier execution committed is unknown: the answer must not be
                    // a definitive rejection (the withdrawal may have gone through).
                    Err(e) => result = Err(ExecuteError::Store(e)),
                }
            }
        }
        result
    }

    /// The events an earlier execution under `key` stored, if it committed. A transient store
    /// error is retried with the fault back-off until `deadline` (at least one look-up is made).
    async fn earlier_execution(
        &self,
        decision: &'static str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Committed>, StoreError> {
        let mut failures = 0;
        loop {
            match self.look_up_execution(decision, key).await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    names::record_store_error("read", &e);
                    failures += 1;
                    let delay = self.inner.policy.fault_delay(failures);
                    if !e.is_transient() || Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    // The caller's own task waits here, not an actor.
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One look-up of the events an earlier execution under `key` stored.
    async fn look_up_execution(
        &self,
        decision: &'static str,
        key: &str,
    ) -> Result<Option<Committed>, StoreError> {
        const PAGE: usize = 64;
        let mut found: Vec<SequencedEvent> = Vec::new();
        loop {
            let ids: Vec<Uuid> = (found.len()..found.len() + PAGE)
                .map(|i| keyed_event_id(decision, key, i))
                .collect();
            let page = self.inner.store.read_ids(&ids).await?;
            let complete = page.len() < PAGE;
            found.extend(page);
            if complete {
                break;
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        Ok(Some(Committed {
            positions: found.iter().map(|e| e.position).collect(),
            events: found.into_iter().map(|e| e.event).collect(),
            attempts: 0,
            replayed: true,
        }))
    }

    async fn run<D: Decision>(
        &self,
        decision: D,
        key: Option<String>,
        deadline: Instant,
        admission: Admission,
    ) -> Result<Committed, ExecuteError<D::Rejection>> {
        let inner = &*self.inner;
        // Counted in flight before looking at `closing` (both SeqCst, as in `shutdown`): either
        // shutdown sees this command and waits for it, or this command sees shutdown and leaves.
        // A runtime shutting down still runs what other processes send it until it resigns its
        // keys (the same way).
        let _inflight = InFlight::enter(inner);
        let refused = match admission {
            Admission::Caller => inner.closing.load(Ordering::SeqCst),
            Admission::Accepted => false,
            Admission::Served => inner.forwarding.as_ref().is_none_or(|f| f.resigned()),
        };
        if refused {
            return Err(ExecuteError::ShuttingDown);
        }
        let command = Command::new(decision, key);
        let gather = || {
            let held = inner.turnstile.holds_any(command.keys());
            inner.overlap.gather(held)
        };
        let slot = &inner.slots[route(command.key(), command.keys(), inner.slots.len(), gather)];
        let command: Arc<dyn ErasedCommand> = Arc::new(command);
        loop {
            if Instant::now() >= deadline {
                return Err(ExecuteError::Timeout);
            }
            if slot.queued.fetch_add(1, Ordering::AcqRel) >= inner.capacity {
                slot.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(ExecuteError::Overloaded);
            }
            let (reply, outcome) = oneshot::channel();
            let job = Job::new(command.clone(), deadline, reply, slot.queued.clone());
            // Subscribed before reading the actor, so a replacement made after the read wakes us.
            let mut current = slot.actor.subscribe();
            let actor = current.borrow_and_update().clone();
            if actor.send_message(CommandMsg::Execute(job)).is_err() {
                // The actor died and its replacement is not in place yet: wait for it.
                let _ = tokio::time::timeout_at(deadline.into(), current.changed()).await;
                continue;
            }
            // No answer: the job never ran (its actor stopped first), submit it again.
            if let Ok(outcome) = outcome.await {
                return Self::map(outcome);
            }
        }
    }

    fn map<R: 'static>(outcome: JobOutcome) -> Result<Committed, ExecuteError<R>> {
        match outcome {
            JobOutcome::Committed(committed) => Ok(committed),
            JobOutcome::Rejected(why) => match why.downcast::<R>() {
                Ok(r) => Err(ExecuteError::Rejected(*r)),
                Err(_) => Err(ExecuteError::Panicked(
                    "rejection of an unexpected type".to_owned(),
                )),
            },
            JobOutcome::ConflictsExhausted { attempts } => {
                Err(ExecuteError::ConflictsExhausted { attempts })
            }
            JobOutcome::Timeout => Err(ExecuteError::Timeout),
            JobOutcome::Panicked(message) => Err(ExecuteError::Panicked(message)),
            JobOutcome::Failed(e) => Err(match e {
                AppendError::Invalid(v) => ExecuteError::Invalid(v),
                AppendError::DuplicateEventId(id) => ExecuteError::DuplicateEventId(id),
                AppendError::Store(s) => ExecuteError::Store(s),
                AppendError::ConditionFailed { .. } => {
                    ExecuteError::ConflictsExhausted { attempts: 0 }
                }
            }),
        }
    }

    /// Stops taking commands, waits for those in flight to finish, then stops the actors.
    ///
    /// A runtime owning keys other processes forward their commands to (see
    /// [`RuntimeBuilder::forward`]) first goes on running what they send until they have sent
    /// nothing for a quarter of a second (at most a second), then gives its keys back: what they
    /// still send is answered at once, "run it yourself".
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        if let Some(forwarding) = &inner.forwarding {
            forwarding.drain().await;
            forwarding.resign().await;
        }
        loop {
            // Registered before the check, so a wake-up between the two is not lost.
            let idle = inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if inner.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            idle.await;
        }
        let _ = inner
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        if let Some(forwarding) = &inner.forwarding {
            // Answers already queued go out before the writer stops.
            forwarding.flush().await;
            forwarding.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn a_command_routes_by_its_key_unless_its_keys_belong_to_several_actors_that_gather() {
        let never = || -> bool { panic!("asked whether to gather a command of one actor") };
        // One key, or several of one actor (4 slots: 1, 5 and 9 are all slot 1): its own key.
        assert_eq!(route(7, &[7], 4, never), 3);
        assert_eq!(route(5, &[1, 5, 9], 4, never), 1);
        assert_eq!(route(6, &[], 4, never), 2);
        // Keys of two actors: the first actor while they gather, else its own key.
        assert_eq!(route(7, &[2, 7], 4, || true), 0);
        assert_eq!(route(7, &[2, 7], 4, || false), 3);
        // One actor: always it.
        assert_eq!(route(7, &[2, 7], 1, never), 0);
    }
}
