//! Turns on keys contended by several processes, through the PostgreSQL they share.
//!
//! The turnstile orders the actors of one process; processes know nothing of each other's. Two
//! processes running one hot boundary invalidate each other's reads on every chain. So when a
//! conflict turns out to come from another process (its append id carries another process's
//! mark), the chain's keys become *leased*: for the next seconds, every chain holding one of
//! them first takes a turn on it across processes, a session advisory lock held from its read to
//! its append (`dcb_take_turns`, V6). PostgreSQL queues the waiters, so the processes take turns
//! chain by chain (the lock is released after each chain, and the next waiter gets it at once):
//! none starves, and each turn decides the commands its actor has queued (up to `max_chain`), in
//! one read and one append. A key stays leased while turns on it keep waiting for other processes.
//!
//! The lock is tied to a session of its own, so a process that dies gives its turns back at
//! once (its socket closes), and a vanished host within the session's keepalives (about 8 s).
//! A wait for turns is bounded by [`TURN_WAIT`] as a whole (the session's `statement_timeout`;
//! its `lock_timeout` would bound each lock, and a chain may wait for many). Correctness never rests on a turn: the
//! append condition still guards every append, so a turn lost or never taken costs a retry.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::Event;
use crate::metrics as names;
use crate::store::{PostgresStore, Session};

/// How long a key stays leased after the last sign of another process on it.
const LEASED_FOR: Duration = Duration::from_secs(2);

/// How long a key's warm state is read before each decision after the last sign of another
/// process on it, its lease lapsed or not: a process whose turns stopped waiting for a while
/// runs without them, and deciding on unread state then would keep failing the appends of the
/// processes still taking turns (measured: 4 processes on one boundary, 33 commands out of
/// attempts in 10 s with the lease's 2 s, none before deciding without reads).
const READ_FIRST_FOR: Duration = Duration::from_secs(30);

/// The longest a chain waits for its turns before running without them.
const TURN_WAIT: Duration = Duration::from_secs(2);

/// After a session failed, the time before opening another.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Conflicting events looked at to tell who appended them.
const WRITERS_LOOKED_AT: usize = 16;

/// Who appended the events that failed a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConflictSource {
    /// Another runtime's append (its id bears another mark): that runtime takes turns too.
    OtherRuntime,
    /// Only appends made without a runtime's append id (by hand, by another tool): no turns.
    Outside,
    SameProcess,
}

impl ConflictSource {
    pub(crate) fn label(self) -> &'static str {
        match self {
            ConflictSource::OtherRuntime | ConflictSource::Outside => "other_process",
            ConflictSource::SameProcess => "same_process",
        }
    }
}

/// A process's view of the keys it shares with other processes.
pub(crate) struct Leases {
    store: PostgresStore,
    /// This process's mark: the first bytes of every append id it writes (a UUID's first six
    /// bytes carry neither version nor variant bits).
    mark: [u8; 6],
    /// Leased keys, with the last time another process was seen on them.
    contended: Mutex<HashMap<u64, Instant>>,
    /// Keys whose commands were forwarded lately, to or from this process (`forwarding.rs`),
    /// with the last time: they stay leased for forwarding, without turns.
    forwarded: Mutex<HashMap<u64, Instant>>,
    /// Leased keys this process owns (`forwarding.rs`): the other processes send their commands
    /// on them here instead of appending. Once no other process's append has met its chains
    /// for `LEASED_FOR` (all of them forward), its chains on them take no turns and trust their
    /// warm state as in one process (an append by another process still fails the condition,
    /// and is read then). Until then the others, still appending, find its turns (V7).
    owned: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("leased", &self.table().len())
            .finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(store: PostgresStore) -> Self {
        let mut mark = [0u8; 6];
        fastrand::fill(&mut mark);
        Self {
            store,
            mark,
            contended: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashSet::new()),
        }
    }

    /// The store's connection settings.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        self.store.config()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        locked(&self.contended)
    }

    /// A fresh append id bearing this process's mark (a version 8 UUID).
    pub(crate) fn append_id(&self) -> Uuid {
        let mut bytes = [0u8; 16];
        fastrand::fill(&mut bytes);
        bytes[..6].copy_from_slice(&self.mark);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    fn is_ours(&self, append_id: Option<Uuid>) -> bool {
        append_id.is_some_and(|id| id.as_bytes()[..6] == self.mark)
    }

    /// Of `keys` (sorted), those leased now: the keys a chain takes turns on. A key this process
    /// owns, only while another process's appends still meet its chains.
    pub(crate) fn leased(&self, keys: &[u64]) -> Vec<u64> {
        let table = self.table();
        if table.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        keys.iter()
            .copied()
            .filter(|k| {
                table
                    .get(k)
                    .is_some_and(|&seen| now.saturating_duration_since(seen) < LEASED_FOR)
            })
            .collect()
    }

    /// Whether `key` is leased now, by another process's appends or by forwarding.
    pub(crate) fn is_leased(&self, key: u64) -> bool {
        let fresh = |seen: Option<&Instant>| seen.is_some_and(|s| s.elapsed() < LEASED_FOR);
        fresh(self.table().get(&key)) || fresh(locked(&self.forwarded).get(&key))
    }

    /// Commands on `key` were forwarded just now, to or from this process.
    pub(crate) fn forwarding(&self, key: u64) {
        locked(&self.forwarded).insert(key, Instant::now());
    }

    /// Whether another process was seen lately on one of `keys`, whose events then come only
    /// with a read: within `READ_FIRST_FOR`, or `LEASED_FOR` on a key this process owns.
    pub(crate) fn seen_lately(&self, keys: &[u64]) -> bool {
        let table = self.table();
        if table.is_empty() {
            return false;
        }
        let owned = locked(&self.owned);
        let now = Instant::now();
        keys.iter().any(|k| {
            let window = if owned.contains(k) {
                LEASED_FOR
            } else {
                READ_FIRST_FOR
            };
            table
                .get(k)
                .is_some_and(|&seen| now.saturating_duration_since(seen) < window)
        })
    }

    /// This process owns `key` now, or no longer.
    pub(crate) fn set_owned(&self, key: u64, owned: bool) {
        let mut set = locked(&self.owned);
        if owned {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// This process owns no key any more.
    pub(crate) fn clear_owned(&self) {
        locked(&self.owned).clear();
    }

    /// Another process was seen on these keys just now.
    pub(crate) fn contended(&self, keys: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        let mut table = self.table();
        for key in keys {
            table.insert(key, now);
        }
    }

    /// Keys leased now; forgets those not seen contended for `READ_FIRST_FOR` (the supervisor
    /// samples it each second).
    pub(crate) fn count(&self) -> usize {
        let now = Instant::now();
        let mut table = self.table();
        table.retain(|_, seen| now.saturating_duration_since(*seen) < READ_FIRST_FOR);
        let mut forwarded = locked(&self.forwarded);
        forwarded.retain(|_, seen| now.saturating_duration_since(*seen) < LEASED_FOR);
        let lapsed = |seen: &Instant| now.saturating_duration_since(*seen) >= LEASED_FOR;
        table
            .iter()
            .filter(|(k, seen)| !lapsed(seen) && !forwarded.contains_key(k))
            .count()
            + forwarded.len()
    }

    /// Who appended the events that failed `condition`, a chain's on `keys`; leases the keys
    /// when another runtime did (a writer without append ids takes no turns: leasing would not
    /// help). A failed look-up counts as this process's (nothing is leased).
    pub(crate) async fn classify(
        &self,
        condition: &AppendCondition,
        keys: &[u64],
    ) -> ConflictSource {
        let writers = match self
            .store
            .writers_after(
                &condition.fail_if_events_match,
                condition.after,
                WRITERS_LOOKED_AT,
            )
            .await
        {
            Ok(writers) => writers,
            Err(e) => {
                names::record_store_error("read", &e);
                return ConflictSource::SameProcess;
            }
        };
        if !writers
            .iter()
            .any(|&id| id.is_some_and(|id| !self.is_ours(Some(id))))
        {
            return if writers.iter().any(Option::is_none) {
                ConflictSource::Outside
            } else {
                ConflictSource::SameProcess
            };
        }
        // Every key of the chain: the others of a multi-key chain (a transfer's second account)
        // are as likely to meet the other process next.
        self.contended(keys.iter().copied());
        ConflictSource::OtherRuntime
    }

    /// Appends a chain other processes (or this actor's next chains) wait for: one holding turns,
    /// or a resend. It never waits in the appender for company (see `store/postgres/linger.rs`).
    pub(crate) async fn append_awaited(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<Appended, AppendError> {
        self.store
            .write_watching(events, Some(condition), Some(append_id), Vec::new(), true)
            .await
            .0
    }

    /// Appends a chain running without turns, watching the turns on its `keys`: when another
    /// session holds one (a process taking turns there, which this one never met: it never
    /// conflicted with it), the keys become leased, and this process's next chains on them take
    /// turns too (V7).
    pub(crate) async fn append_watching(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: AppendCondition,
        keys: &[u64],
    ) -> Result<Appended, AppendError> {
        let mut locks: Vec<i32> = keys.iter().map(|&k| lock_key(k)).collect();
        locks.sort_unstable();
        locks.dedup();
        let (answer, held) = self
            .store
            .write_watching(events, Some(condition), Some(append_id), locks, false)
            .await;
        if !held.is_empty() {
            metrics::counter!(names::LEASES_TOTAL, "event" => "seen").increment(held.len() as u64);
            self.contended(keys.iter().copied());
        }
        answer
    }
}

/// Locks `m`. Nothing panics while the runtime's tables are locked, so a poisoned one is still
/// consistent.
pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A command actor's connection for its turns, opened when first needed.
#[derive(Default)]
pub(crate) struct TurnSession {
    session: Option<Session>,
    /// After a failure: not to open another before this instant.
    closed_until: Option<Instant>,
    /// Holds turns now.
    holding: bool,
}

/// A key in the advisory-lock key space of turns: 64 bits folded into the lock's 32 (two keys
/// that fold alike take turns together, which costs waiting, never correctness).
pub(crate) fn lock_key(key: u64) -> i32 {
    #[allow(clippy::cast_possible_truncation)]
    let folded = (key ^ (key >> 32)) as u32;
    i32::from_ne_bytes(folded.to_ne_bytes())
}

impl TurnSession {
    /// Takes a turn on every one of `keys` (sorted, leased) across processes, in ascending lock
    /// order; whether the turns are held (without them the chain runs all the same).
    pub(crate) async fn take(&mut self, leases: &Leases, keys: &[u64]) -> bool {
        let mut locks: Vec<i32> = keys.iter().map(|&k| lock_key(k)).collect();
        locks.sort_unstable();
        locks.dedup();
        // Counted per lock, as `taken` and `handed_over` are.
        let count = locks.len() as u64;
        if self.session(leases).await.is_none() {
            metrics::counter!(names::LEASES_TOTAL, "event" => "lost").increment(count);
            return false;
        }
        self.holding = true;
        let Some(session) = &self.session else {
            return false;
        };
        let taken = match session.take_turns_statement().await {
            Ok(take) => session.client().query_one(take, &[&locks]).await,
            Err(e) => Err(e),
        };
        match taken.and_then(|row| row.try_get::<_, Vec<i32>>(0)) {
            Ok(waited) => {
                let handed = waited.len() as u64;
                metrics::counter!(names::LEASES_TOTAL, "event" => "handed_over").increment(handed);
                metrics::counter!(names::LEASES_TOTAL, "event" => "taken")
                    .increment(count - handed);
                if !waited.is_empty() {
                    // Another process held some: the chain's keys are still contended.
                    leases.contended(keys.iter().copied());
                }
                true
            }
            Err(e) => {
                // Timed out waiting (another process's turn outlasted the wait) or the session
                // failed: the turns taken so far are given back when the chain ends.
                tracing::debug!(error = %e, "no turn on contended keys");
                metrics::counter!(names::LEASES_TOTAL, "event" => "lost").increment(count);
                false
            }
        }
    }

    /// Gives back the turns taken for the chain that just ended.
    pub(crate) async fn give_back(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        let released = match &self.session {
            Some(session) => match session.give_back_statement().await {
                Ok(give_back) => session.client().execute(give_back, &[]).await.is_ok(),
                Err(_) => false,
            },
            None => true,
        };
        if !released {
            // Turns this session may still hold must end: with the session.
            self.fail();
        }
    }

    async fn session(&mut self, leases: &Leases) -> Option<&Session> {
        if self.session.as_ref().is_some_and(|s| !s.is_alive()) {
            self.fail();
        }
        if self.session.is_none() {
            if self.closed_until.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match open(leases).await {
                Ok(session) => self.session = Some(session),
                Err(e) => {
                    tracing::warn!(error = %e, "could not open a session for turns on contended keys");
                    self.closed_until = Some(Instant::now() + REOPEN_AFTER);
                    return None;
                }
            }
        }
        self.session.as_ref()
    }

    fn fail(&mut self) {
        self.session = None;
        self.holding = false;
        self.closed_until = Some(Instant::now() + REOPEN_AFTER);
    }
}

async fn open(leases: &Leases) -> Result<Session, StoreError> {
    let session = Session::open(leases.store.config()).await?;
    let wait = TURN_WAIT.as_millis();
    session
        .client()
        .batch_execute(&format!(
            "SET statement_timeout = {wait}; SET lock_timeout = {wait}"
        ))
        .await?;
    // A backend waiting for a lock notices a client gone only when the wait ends, holding the
    // turns it took meanwhile: PostgreSQL 14 and later check the socket while waiting.
    if let Err(e) = session
        .client()
        .batch_execute("SET client_connection_check_interval = 1000")
        .await
    {
        tracing::debug!(error = %e, "no client_connection_check_interval (PostgreSQL before 14)");
    }
    Ok(session)
}
