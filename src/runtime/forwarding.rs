//! Commands forwarded to the process that owns their key.
//!
//! Turns (`leases.rs`) stop processes from invalidating each other's reads on a hot boundary,
//! but each turn decides only the commands its own process has waiting: four processes of 16
//! callers each append chains of 16, one after the other, where one process of 64 callers
//! appends chains of 64 (the README's "Performance": about 0.4x of one process). So a decision
//! registered with [`crate::RuntimeBuilder::forward`] goes, while its key is leased, to the one
//! process that *owns* the key, and joins that process's chains there.
//!
//! - **Ownership** is a session advisory lock (key space 1145258575, 'DCBO') taken with
//!   `pg_try_advisory_lock` on the connection that listens for this process's forwarded
//!   commands, on channel `dcb_forward_<its backend pid>`. Whoever does not get the lock finds
//!   the holder's pid among this database's locks in `pg_locks`: that names its channel. No
//!   table, no consensus of our own: a process that dies loses its ownership with its session,
//!   and a lapsed lease gives it back. Nothing of this starts before a key is first leased.
//! - **Transport** is `NOTIFY` from a session committing asynchronously (no disk sync):
//!   requests and answers are packed many to a notification by one writer per process, which
//!   sends whatever queued while it sent the last.
//! - **Correctness never rests on it**: the owner runs the command like any other (the append
//!   condition guards it), under an idempotency key the sender chose, and decides it within
//!   [`OWNER_BUDGET`] or not at all. A sender that hears no answer within [`FORWARD_WAIT`] (the
//!   owner died, or a notification was lost), or hears that it did not commit there, runs the
//!   command itself under the same key: it is committed once whichever ran it (see
//!   `Runtime::execute_with_key`).

mod transport;
mod wire;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::leases::{Leases, lock_key, locked};
use super::{Admission, Committed, Inner, Runtime, keyed_event_id};
use crate::decision::Decision;
use crate::metrics as names;
use crate::store::EventStore;
use transport::{Link, Note, channel_of};
use wire::{Answer, Envelope, MAX_PAYLOAD, Request, WireCommitted};

/// The advisory-lock key space of ownership ('DCBO', beside the turns' 'DCBT').
const OWNERS_SPACE: i32 = 0x4443_424F;

/// How long a sender waits for the owner's answer before running the command itself.
pub(crate) const FORWARD_WAIT: Duration = Duration::from_millis(500);

/// How long the owner may take to decide a forwarded command: a job not decided by then
/// expires there undecided, well before the sender gives up waiting ([`FORWARD_WAIT`]).
const OWNER_BUDGET: Duration = Duration::from_millis(400);

/// How long a look-up of a key's owner may take before the command runs here instead.
const LOOK_UP_WAIT: Duration = Duration::from_secs(1);

/// How a forwarded command ended, as its sender knows it.
pub(crate) enum Forwarded {
    /// Committed by the owner (its answer bears the events' keyed ids).
    Committed(Committed),
    /// Not committed there (refused, failed, not taken), or never sent: run it here.
    NotCommitted,
    /// No answer in time: the owner may have died, or may still commit what it decided within
    /// [`OWNER_BUDGET`].
    NoAnswer,
}

/// Whether `committed`'s events bear the ids `decision` gives them under `key`.
fn is_keyed(committed: &Committed, decision: &'static str, key: &str) -> bool {
    committed.positions.len() == committed.events.len()
        && committed
            .events
            .iter()
            .enumerate()
            .all(|(i, e)| e.id() == keyed_event_id(decision, key, i))
}

/// A sender's wait for an answer, in the pending table until dropped.
struct Pending<'a> {
    table: &'a Mutex<HashMap<u64, oneshot::Sender<Option<Committed>>>>,
    id: u64,
}

impl<'a> Pending<'a> {
    fn insert(
        table: &'a Mutex<HashMap<u64, oneshot::Sender<Option<Committed>>>>,
        id: u64,
        reply: oneshot::Sender<Option<Committed>>,
    ) -> Self {
        locked(table).insert(id, reply);
        Self { table, id }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        locked(self.table).remove(&self.id);
    }
}

/// How long a sender trusts what it found out about another process owning a key (a look-up
/// costs one query of `pg_locks`). An owner shutting down keeps answering for this long after
/// the last request it received, so that no sender waits [`FORWARD_WAIT`] on it.
const OWNER_FRESH: Duration = Duration::from_millis(250);

/// How often the owner gives back keys whose lease lapsed.
const RELEASE_EVERY: Duration = Duration::from_millis(250);

/// Runs a forwarded command in the owner; `None` unless it committed.
type Serve<S> = Arc<
    dyn Fn(Arc<Inner<S>>, String, Value, Duration) -> BoxFuture<'static, Option<Committed>>
        + Send
        + Sync,
>;

/// How one registered decision crosses between processes.
pub(crate) struct Codec<S> {
    encode: fn(&dyn Any) -> Option<Value>,
    serve: Serve<S>,
}

impl<S: EventStore + 'static> Codec<S> {
    pub(crate) fn of<D: Decision + Serialize + DeserializeOwned>() -> Self {
        Self {
            encode: |decision| serde_json::to_value(decision.downcast_ref::<D>()?).ok(),
            serve: Arc::new(|inner, key, command, budget| {
                Box::pin(async move {
                    let decision: D = serde_json::from_value(command).ok()?;
                    let deadline = Instant::now() + budget;
                    Runtime { inner }
                        .decide_keyed(decision, Some(key), deadline, Admission::Served)
                        .await
                        .ok()
                })
            }),
        }
    }
}

/// Who owns a key, as this process last found out.
enum Owner {
    /// This process, through the listening connection on `channel`.
    Me {
        channel: String,
    },
    Other {
        channel: String,
        seen: Instant,
    },
}

pub(crate) struct Forwarding<S> {
    codecs: HashMap<&'static str, Codec<S>>,
    leases: Arc<Leases>,
    link: Mutex<Option<Arc<Link>>>,
    owners: tokio::sync::Mutex<HashMap<u64, Owner>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Option<Committed>>>>,
    next_id: AtomicU64,
    outbox: mpsc::UnboundedSender<Note>,
    /// The writer's queue, until the writer takes it (see `ensure_started`).
    unsent: Mutex<Option<mpsc::UnboundedReceiver<Note>>>,
    /// The runtime serving forwarded commands, once started.
    runtime: Mutex<Option<Weak<Inner<S>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When the last forwarded request arrived.
    last_request: Mutex<Option<Instant>>,
    /// Set as the runtime shuts down: it claims no key any more.
    resigned: std::sync::atomic::AtomicBool,
}

impl<S> std::fmt::Debug for Codec<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec")
    }
}

impl<S> Forwarding<S> {
    /// Stops listening and sending: this process's ownerships end with the connection.
    pub(crate) fn stop(&self) {
        for task in locked(&self.tasks).drain(..) {
            task.abort();
        }
        *locked(&self.link) = None;
    }

    fn link(&self) -> Option<Arc<Link>> {
        locked(&self.link).clone()
    }
}

impl<S: EventStore + 'static> Forwarding<S> {
    pub(crate) fn new(codecs: HashMap<&'static str, Codec<S>>, leases: Arc<Leases>) -> Self {
        let (outbox, unsent) = mpsc::unbounded_channel();
        Self {
            codecs,
            leases,
            link: Mutex::new(None),
            owners: tokio::sync::Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            // A random start: an answer meant for a runtime before this one on the same
            // channel (a reused backend pid) matches no request of this one.
            next_id: AtomicU64::new(fastrand::u64(..)),
            outbox,
            unsent: Mutex::new(Some(unsent)),
            runtime: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            last_request: Mutex::new(None),
            resigned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Names the runtime that serves the commands forwarded here. Nothing starts until a key
    /// is first leased ([`Forwarding::destination`]): a process whose keys no other process
    /// contends for opens no connection for forwarding and hears no notification.
    pub(crate) fn start(&self, runtime: Weak<Inner<S>>) {
        *locked(&self.runtime) = Some(runtime);
    }

    /// Starts the listener, the writer and the release of lapsed keys, once.
    fn ensure_started(self: &Arc<Self>) {
        let Some(runtime) = locked(&self.runtime).clone() else {
            return;
        };
        let Some(unsent) = locked(&self.unsent).take() else {
            return;
        };
        let listener = tokio::spawn(transport::listen(self.clone(), runtime));
        let writer = tokio::spawn(transport::write(self.clone(), unsent));
        let release = tokio::spawn(transport::release(self.clone()));
        locked(&self.tasks).extend([listener, writer, release]);
    }

    /// Gives back every key this process owns and claims none any more, as the runtime shuts
    /// down: the other processes then find no owner and one of them claims the key, and what they
    /// still send here is answered "run it yourself" (the runtime takes no new command).
    pub(crate) async fn resign(&self) {
        self.resigned.store(true, Ordering::SeqCst);
        let mut owners = self.owners.lock().await;
        let owned = owners
            .values()
            .filter(|o| matches!(o, Owner::Me { .. }))
            .count();
        metrics::counter!(names::OWNERSHIPS_TOTAL, "event" => "given_back").increment(owned as u64);
        owners.clear();
        self.leases.clear_owned();
        metrics::gauge!(names::OWNED_KEYS).set(0.0);
        if let Some(link) = self.link()
            && let Err(e) = link
                .client
                .execute("SELECT pg_advisory_unlock_all()", &[])
                .await
        {
            tracing::debug!(error = %e, "could not give ownerships back");
        }
    }

    /// Waits until no request arrived for [`OWNER_FRESH`] (the senders are done, or have looked
    /// for the owner again), at most four times that: then [`Forwarding::resign`].
    pub(crate) async fn drain(&self) {
        let limit = Instant::now() + 4 * OWNER_FRESH;
        loop {
            let Some(last) = *locked(&self.last_request) else {
                return;
            };
            let quiet = last + OWNER_FRESH;
            if Instant::now() >= quiet.min(limit) {
                return;
            }
            tokio::time::sleep_until(quiet.min(limit).into()).await;
        }
    }

    /// Waits (at most a second) until the notifications queued so far were sent.
    pub(crate) async fn flush(&self) {
        if locked(&self.unsent).is_some() {
            // Never started: nothing was queued.
            return;
        }
        let (sent, flushed) = oneshot::channel();
        if self.outbox.send(Note::marker(sent)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), flushed).await;
        }
    }

    /// Whether [`Forwarding::resign`] was called.
    pub(crate) fn resigned(&self) -> bool {
        self.resigned.load(Ordering::SeqCst)
    }

    /// Whether decisions named `decision` may be forwarded.
    pub(crate) fn forwards(&self, decision: &str) -> bool {
        self.codecs.contains_key(decision)
    }

    /// The decision serialised, with the channel of the process owning its `key`, when the key
    /// is leased and another process owns it.
    pub(crate) async fn destination<D: Decision>(
        self: &Arc<Self>,
        decision: &D,
        key: u64,
    ) -> Option<(String, Value)> {
        let codec = self.codecs.get(D::NAME)?;
        if !self.leases.is_leased(key) {
            return None;
        }
        // The first leased key starts forwarding; this command runs here while it connects.
        self.ensure_started();
        let channel = self.owner_elsewhere(key).await?;
        Some((channel, (codec.encode)(decision)?))
    }

    /// The channel of the process owning `key`, unless it is this one (or nobody: then this
    /// one claims it).
    async fn owner_elsewhere(&self, key: u64) -> Option<String> {
        let link = self.link()?;
        let mut owners = self.owners.lock().await;
        match owners.get(&key) {
            Some(Owner::Me { channel }) if *channel == link.channel => return None,
            Some(Owner::Other { channel, seen }) if seen.elapsed() < OWNER_FRESH => {
                return Some(channel.clone());
            }
            _ => {}
        }
        if self.resigned.load(Ordering::SeqCst) {
            return None;
        }
        let lock = lock_key(key);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&OWNERS_SPACE, &lock];
        let look_up = link.client.query_one(
            "SELECT pg_try_advisory_lock($1, $2), \
                    (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
                       AND database = (SELECT oid FROM pg_database \
                                       WHERE datname = current_database()) \
                       AND classid::bigint = ($1::int::bigint & 4294967295) \
                       AND objid::bigint = ($2::int::bigint & 4294967295) \
                       AND granted AND pid <> pg_backend_pid() LIMIT 1)",
            &params,
        );
        let Ok(claimed) = tokio::time::timeout(LOOK_UP_WAIT, look_up).await else {
            // The connection hangs: run it here (a lock taken meanwhile ends with the
            // connection, which its keepalives end).
            tracing::debug!("the look-up of a key's owner timed out");
            return None;
        };
        let claimed = claimed.and_then(|row| {
            Ok((
                row.try_get::<_, bool>(0)?,
                row.try_get::<_, Option<i32>>(1)?,
            ))
        });
        match claimed {
            Ok((true, _)) => {
                metrics::counter!(names::OWNERSHIPS_TOTAL, "event" => "taken").increment(1);
                self.leases.set_owned(key, true);
                owners.insert(
                    key,
                    Owner::Me {
                        channel: link.channel.clone(),
                    },
                );
                None
            }
            Ok((false, Some(pid))) => {
                let channel = channel_of(pid);
                owners.insert(
                    key,
                    Owner::Other {
                        channel: channel.clone(),
                        seen: Instant::now(),
                    },
                );
                Some(channel)
            }
            // Given back between the two looks, or the connection failed: run it here.
            Ok((false, None)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "could not look up a key's owner");
                None
            }
        }
    }

    /// Sends the command to the owner on `channel` and waits for its answer, at most
    /// [`FORWARD_WAIT`]; the owner decides it within [`OWNER_BUDGET`] or not at all.
    pub(crate) async fn forward(
        &self,
        channel: String,
        decision: &'static str,
        key: u64,
        idempotency_key: &str,
        command: Value,
        deadline: Instant,
    ) -> Forwarded {
        let Some(link) = self.link() else {
            return Forwarded::NotCommitted;
        };
        let now = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let budget = OWNER_BUDGET.min(deadline.saturating_duration_since(now));
        let request = Request {
            id,
            reply_to: link.channel.clone(),
            decision: decision.to_owned(),
            key,
            idempotency_key: idempotency_key.to_owned(),
            command,
            budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
        };
        let Ok(item) = serde_json::to_string(&request) else {
            return Forwarded::NotCommitted;
        };
        if item.len() + 16 > MAX_PAYLOAD {
            return Forwarded::NotCommitted;
        }
        let (reply, answer) = oneshot::channel();
        // Removed however this ends, the caller's future dropped included.
        let _pending = Pending::insert(&self.pending, id, reply);
        // The key stays leased here while its commands go to the owner.
        self.leases.forwarding(key);
        let sent = self.outbox.send(Note::new(channel.clone(), false, item));
        let wait = (now + FORWARD_WAIT).min(deadline);
        let answered = match sent {
            Ok(()) => tokio::time::timeout_at(wait.into(), answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        let outcome = match answered {
            // Only an answer bearing the ids this key gives its events is believed: anything
            // else on the channel is no answer.
            Some(Some(committed)) if is_keyed(&committed, decision, idempotency_key) => {
                Forwarded::Committed(committed)
            }
            Some(None) => Forwarded::NotCommitted,
            _ => Forwarded::NoAnswer,
        };
        if !matches!(outcome, Forwarded::Committed(_)) {
            // The owner may be shutting down or gone: look again next time (unless this
            // process took the key over meanwhile).
            let mut owners = self.owners.lock().await;
            if matches!(owners.get(&key), Some(Owner::Other { channel: c, .. }) if *c == channel) {
                owners.remove(&key);
            }
        }
        let label = match outcome {
            Forwarded::Committed(_) => "committed",
            Forwarded::NotCommitted => "run_here",
            Forwarded::NoAnswer => "no_answer",
        };
        metrics::counter!(names::FORWARDED_COMMANDS_TOTAL, "decision" => decision, "outcome" => label)
            .increment(1);
        outcome
    }

    fn dispatch(self: &Arc<Self>, runtime: &Weak<Inner<S>>, payload: &str) {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(Envelope::Answers(answers)) => {
                let mut pending = locked(&self.pending);
                for answer in answers {
                    if let Some(waiting) = pending.remove(&answer.id) {
                        let _ = waiting.send(answer.committed.map(Committed::from));
                    }
                }
            }
            Ok(Envelope::Requests(requests)) => {
                *locked(&self.last_request) = Some(Instant::now());
                for request in requests {
                    let Some(inner) = runtime.upgrade() else {
                        return;
                    };
                    tokio::spawn(self.clone().serve(inner, request));
                }
            }
            Err(e) => tracing::debug!(error = %e, "a forwarding notification did not parse"),
        }
    }

    /// Runs a command another process forwarded, and answers it.
    async fn serve(self: Arc<Self>, runtime: Arc<Inner<S>>, request: Request) {
        // The key stays leased, and owned, while others send its commands here.
        self.leases.forwarding(request.key);
        let committed = match self.codecs.get(request.decision.as_str()) {
            Some(codec) => {
                let budget = Duration::from_millis(request.budget_ms).min(OWNER_BUDGET);
                (codec.serve)(runtime, request.idempotency_key, request.command, budget).await
            }
            None => None,
        };
        metrics::counter!(names::FORWARDED_COMMANDS_SERVED_TOTAL).increment(1);
        let mut item = serde_json::to_string(&Answer {
            id: request.id,
            committed: committed.as_ref().map(WireCommitted::from),
        });
        if item.as_ref().is_ok_and(|i| i.len() + 16 > MAX_PAYLOAD) {
            // Too large to answer: the sender runs it again and finds it committed.
            item = serde_json::to_string(&Answer {
                id: request.id,
                committed: None,
            });
        }
        if let Ok(item) = item {
            let _ = self.outbox.send(Note::new(request.reply_to, true, item));
        }
    }

    /// Gives back the keys this process owns whose lease lapsed (nobody else is on them).
    async fn release_lapsed(&self) {
        let Some(link) = self.link() else { return };
        let mut owners = self.owners.lock().await;
        owners.retain(|_, o| match o {
            Owner::Other { seen, .. } => seen.elapsed() < OWNER_FRESH,
            Owner::Me { .. } => true,
        });
        let lapsed: Vec<u64> = owners
            .iter()
            .filter(|(k, o)| matches!(o, Owner::Me { .. }) && !self.leases.is_leased(**k))
            .map(|(k, _)| *k)
            .collect();
        for key in lapsed {
            owners.remove(&key);
            self.leases.set_owned(key, false);
            metrics::counter!(names::OWNERSHIPS_TOTAL, "event" => "given_back").increment(1);
            if let Err(e) = link
                .client
                .execute(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&OWNERS_SPACE, &lock_key(key)],
                )
                .await
            {
                tracing::debug!(error = %e, "could not give a key's ownership back");
            }
        }
        let owned = owners
            .values()
            .filter(|o| matches!(o, Owner::Me { .. }))
            .count();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(names::OWNED_KEYS).set(owned as f64);
    }
}
