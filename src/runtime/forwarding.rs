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
//!   `pg_try_advisory_lock` on a session of this process that advertises, as its
//!   `application_name`, where the process takes forwarded commands. Whoever does not get the
//!   lock finds the holder among this database's locks in `pg_locks`, its address in
//!   `pg_stat_activity` and the token it asks for in `dcb_forward_tokens`. No consensus of our
//!   own: a process that dies loses its ownership with its session, and a lapsed lease gives it
//!   back. Nothing of this starts before a key is first leased.
//! - **Transport** is TCP straight to the owner (`transport.rs`): requests and answers packed
//!   many to a line, one connection per sender and owner.
//! - **Correctness never rests on it**: the owner runs the command like any other (the append
//!   condition guards it), under an idempotency key the sender chose, and decides it within
//!   [`OWNER_BUDGET`] or not at all. A sender that hears no answer within [`FORWARD_WAIT`] (the
//!   owner hangs) or whose connection to the owner closes first (it died), or hears that it did
//!   not commit there, runs the command itself under the same key: it is committed once
//!   whichever ran it (see `Runtime::execute_with_key`).

mod transport;
mod wire;

use std::any::Any;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::peer::Peer;
use crate::store::EventStore;
use transport::{Link, Out};
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

/// Who waits for the answer to a request: its sender, and the number of the connection it went
/// out on (all of whose requests go unanswered when it closes).
struct Waiting {
    connection: u64,
    reply: oneshot::Sender<Option<Committed>>,
}

/// A sender's wait for an answer, in the pending table until dropped.
struct Pending<'a> {
    table: &'a Mutex<HashMap<u64, Waiting>>,
    id: u64,
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
    /// This process, through its session of this generation ([`Link::generation`]).
    Me {
        generation: u64,
    },
    Other {
        address: Peer,
        seen: Instant,
    },
}

pub(crate) struct Forwarding<S> {
    codecs: HashMap<&'static str, Codec<S>>,
    leases: Arc<Leases>,
    /// Where this process takes forwarded commands (see
    /// [`crate::RuntimeBuilder::forward_address`]).
    bind: SocketAddr,
    link: Mutex<Option<Arc<Link>>>,
    owners: tokio::sync::Mutex<HashMap<u64, Owner>>,
    pending: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    /// The connection to each owner this process sends to: its number and request queue.
    peers: Mutex<HashMap<Peer, (u64, mpsc::UnboundedSender<Out>)>>,
    next_connection: AtomicU64,
    /// For [`Forwarding::flush`]: each sender connection's request queue, and each owner
    /// connection's channel for flushes.
    queues: Mutex<Vec<mpsc::UnboundedSender<Out>>>,
    started: AtomicBool,
    /// The runtime serving forwarded commands, once started.
    runtime: Mutex<Option<Weak<Inner<S>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When the last forwarded request arrived.
    last_request: Mutex<Option<Instant>>,
    /// Set as the runtime shuts down: it claims no key any more.
    resigned: std::sync::atomic::AtomicBool,
    /// The token this process advertises (an earlier session of its own holding a key is no
    /// other owner).
    me: std::sync::OnceLock<String>,
    /// Owners this process could not connect to, or that left a command unanswered for
    /// [`FORWARD_WAIT`], and when.
    unreachable: Mutex<HashMap<Peer, Instant>>,
}

/// How long an owner this process could not connect to, or that did not answer, is not tried
/// again.
const RECHECK_UNREACHABLE: Duration = Duration::from_secs(2);

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
    pub(crate) fn new(
        codecs: HashMap<&'static str, Codec<S>>,
        leases: Arc<Leases>,
        bind: SocketAddr,
    ) -> Self {
        Self {
            codecs,
            leases,
            bind,
            link: Mutex::new(None),
            owners: tokio::sync::Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            queues: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            runtime: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            last_request: Mutex::new(None),
            resigned: std::sync::atomic::AtomicBool::new(false),
            me: std::sync::OnceLock::new(),
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    /// Names the runtime that serves the commands forwarded here. Nothing starts until a key
    /// is first leased ([`Forwarding::destination`]): a process whose keys no other process
    /// contends for opens no connection and no port for forwarding.
    pub(crate) fn start(&self, runtime: Weak<Inner<S>>) {
        *locked(&self.runtime) = Some(runtime);
    }

    /// Starts the listener with its session, and the release of lapsed keys, once.
    fn ensure_started(self: &Arc<Self>) {
        let Some(runtime) = locked(&self.runtime).clone() else {
            return;
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let serve = tokio::spawn(transport::serve(self.clone(), runtime, self.bind));
        let release = tokio::spawn(transport::release(self.clone()));
        locked(&self.tasks).extend([serve, release]);
    }

    /// Keeps `task` to abort it at [`Forwarding::stop`] (dropping those that ended).
    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = locked(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Keeps `queue` for [`Forwarding::flush`] (dropping those that closed).
    fn keep_queue(&self, queue: &mpsc::UnboundedSender<Out>) {
        let mut queues = locked(&self.queues);
        queues.retain(|q| !q.is_closed());
        queues.push(queue.clone());
    }

    /// The session holding this process's ownerships ended: they are gone.
    async fn link_lost(&self) {
        *locked(&self.link) = None;
        self.owners.lock().await.clear();
        self.leases.clear_owned();
        metrics::gauge!(names::OWNED_KEYS).set(0.0);
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

    /// Waits (at most a second) until the requests and answers queued so far were written.
    pub(crate) async fn flush(&self) {
        let flushed: Vec<_> = locked(&self.queues)
            .iter()
            .filter_map(|queue| {
                let (sent, flushed) = oneshot::channel();
                queue.send(Out::Marker(sent)).ok().map(|()| flushed)
            })
            .collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(flushed)).await;
    }

    /// Whether [`Forwarding::resign`] was called.
    pub(crate) fn resigned(&self) -> bool {
        self.resigned.load(Ordering::SeqCst)
    }

    /// Whether decisions named `decision` may be forwarded.
    pub(crate) fn forwards(&self, decision: &str) -> bool {
        self.codecs.contains_key(decision)
    }

    /// The decision serialised, with the address of the process owning its `key`, when the key
    /// is leased and another process owns it.
    pub(crate) async fn destination<D: Decision>(
        self: &Arc<Self>,
        decision: &D,
        key: u64,
    ) -> Option<(Peer, Value)> {
        let codec = self.codecs.get(D::NAME)?;
        if !self.leases.is_leased(key) {
            return None;
        }
        // The first leased key starts forwarding; this command runs here while it connects.
        self.ensure_started();
        let address = self.owner_elsewhere(key).await?;
        Some((address, (codec.encode)(decision)?))
    }

    /// The address of the process owning `key`, unless it is this one (or nobody: then this
    /// one claims it).
    async fn owner_elsewhere(&self, key: u64) -> Option<Peer> {
        let link = self.link()?;
        let mut owners = self.owners.lock().await;
        match owners.get(&key) {
            Some(Owner::Me { generation }) if *generation == link.generation => return None,
            Some(Owner::Other { address, seen }) if seen.elapsed() < OWNER_FRESH => {
                return Some(address.clone());
            }
            _ => {}
        }
        if self.resigned.load(Ordering::SeqCst) {
            return None;
        }
        let lock = lock_key(key);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&OWNERS_SPACE, &lock];
        // Where the holder takes forwarded commands: what its session advertised (`peer.rs`).
        let look_up = link.client.query_one(
            "SELECT pg_try_advisory_lock($1, $2), \
                    (SELECT ARRAY[t.address, t.token] FROM pg_locks l \
                       JOIN dcb_forward_tokens t ON t.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.objsubid = 2 \
                       AND l.database = (SELECT oid FROM pg_database \
                                         WHERE datname = current_database()) \
                       AND l.classid::bigint = ($1::int::bigint & 4294967295) \
                       AND l.objid::bigint = ($2::int::bigint & 4294967295) \
                       AND l.granted AND l.pid <> pg_backend_pid() \
                       AND t.address IS NOT NULL LIMIT 1)",
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
                row.try_get::<_, Option<Vec<String>>>(1)?,
            ))
        });
        match claimed {
            Ok((true, _)) => {
                metrics::counter!(names::OWNERSHIPS_TOTAL, "event" => "taken").increment(1);
                self.leases.set_owned(key, true);
                owners.insert(
                    key,
                    Owner::Me {
                        generation: link.generation,
                    },
                );
                None
            }
            Ok((false, Some(advertised))) => {
                // A holder that advertises no address (not a runtime of ours): run it here.
                let [socket, token] = advertised.as_slice() else {
                    return None;
                };
                let address = Peer::parse(socket, token)?;
                // An earlier session of this process, not yet ended by the server: run it here.
                if self.me.get() == Some(&address.token) {
                    return None;
                }
                owners.insert(
                    key,
                    Owner::Other {
                        address: address.clone(),
                        seen: Instant::now(),
                    },
                );
                Some(address)
            }
            // Given back between the two looks, or the connection failed: run it here.
            Ok((false, None)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "could not look up a key's owner");
                None
            }
        }
    }

    /// Sends the command to the owner at `to` and waits for its answer, at most
    /// [`FORWARD_WAIT`]; the owner decides it within [`OWNER_BUDGET`] or not at all.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        to: Peer,
        decision: &'static str,
        key: u64,
        idempotency_key: &str,
        command: Value,
        deadline: Instant,
    ) -> Forwarded {
        let now = Instant::now();
        if locked(&self.unreachable)
            .get(&to)
            .is_some_and(|when| when.elapsed() < RECHECK_UNREACHABLE)
        {
            return Forwarded::NotCommitted;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let budget = OWNER_BUDGET.min(deadline.saturating_duration_since(now));
        let request = Request {
            id,
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
        // The key stays leased here while its commands go to the owner.
        self.leases.forwarding(key);
        // Removed however this ends, the caller's future dropped included.
        let _pending = self.send(&to, id, reply, item);
        let wait = (now + FORWARD_WAIT).min(deadline);
        let answered = match tokio::time::timeout_at(wait.into(), answer).await {
            Ok(answered) => answered.ok(),
            Err(_) => {
                // Connected but silent (stalled, or its host gone while its session lasts): the
                // next commands on its keys run here for a while instead of each waiting too.
                if Instant::now() < deadline {
                    self.found_unreachable(&to);
                }
                None
            }
        };
        let outcome = match answered {
            // Only an answer bearing the ids this key gives its events is believed: anything
            // else is no answer.
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
            if matches!(owners.get(&key), Some(Owner::Other { address, .. }) if *address == to) {
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

    /// `to` could not be connected to, or left a command unanswered: not tried again for
    /// [`RECHECK_UNREACHABLE`]. Entries older than that go at the same time, so the table holds
    /// only the owners found so lately.
    pub(super) fn found_unreachable(&self, to: &Peer) {
        let mut unreachable = locked(&self.unreachable);
        unreachable.retain(|_, when| when.elapsed() < RECHECK_UNREACHABLE);
        unreachable.insert(to.clone(), Instant::now());
    }

    /// Queues request `id` (`item`) on the connection to `to`, opening one if there is none,
    /// and waits for its answer on `reply` until the returned guard drops. Requests on a
    /// connection that fails go unanswered at once (see [`Forwarding::connection_lost`]).
    fn send(
        self: &Arc<Self>,
        to: &Peer,
        id: u64,
        reply: oneshot::Sender<Option<Committed>>,
        item: String,
    ) -> Pending<'_> {
        let queue = {
            let mut peers = locked(&self.peers);
            let (connection, queue) = match peers.get(to).filter(|(_, queue)| !queue.is_closed()) {
                Some((connection, queue)) => (*connection, queue.clone()),
                None => {
                    let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
                    let (queue, queued) = mpsc::unbounded_channel();
                    peers.insert(to.clone(), (connection, queue.clone()));
                    self.keep_queue(&queue);
                    let connected =
                        transport::send_requests(self.clone(), to.clone(), connection, queued);
                    self.track(tokio::spawn(connected));
                    (connection, queue)
                }
            };
            // Under the peers' lock: a `connection_lost` of this connection (which takes the
            // peers' lock first) either ran before, and the queue is closed, or sweeps it.
            locked(&self.pending).insert(id, Waiting { connection, reply });
            queue
        };
        let pending = Pending {
            table: &self.pending,
            id,
        };
        // A queue closed meanwhile: `connection_lost` answers it, or its wait ends.
        let _ = queue.send(Out::Item(item));
        pending
    }

    /// Connection `connection` to an owner closed (or never opened): what was sent on it goes
    /// unanswered, so its senders run their commands here without waiting out
    /// [`FORWARD_WAIT`].
    fn connection_lost(&self, to: &Peer, connection: u64) {
        let mut peers = locked(&self.peers);
        if peers.get(to).is_some_and(|(c, _)| *c == connection) {
            peers.remove(to);
        }
        drop(peers);
        locked(&self.pending).retain(|_, waiting| waiting.connection != connection);
    }

    /// Answers from an owner this process sent requests to, on connection `connection`: each
    /// goes to its request if it was sent on that connection.
    fn answered(&self, packet: &str, connection: u64) {
        match serde_json::from_str::<Envelope>(packet) {
            Ok(Envelope::Answers(answers)) => {
                let mut pending = locked(&self.pending);
                for answer in answers {
                    if let Entry::Occupied(waiting) = pending.entry(answer.id)
                        && waiting.get().connection == connection
                    {
                        let reply = waiting.remove().reply;
                        let _ = reply.send(answer.committed.map(Committed::from));
                    }
                }
            }
            Ok(Envelope::Requests(_)) => tracing::debug!("requests where answers were due"),
            Err(e) => tracing::debug!(error = %e, "a forwarding packet did not parse"),
        }
    }

    /// Requests from a process that found this one owning their keys: each as the future that
    /// runs it and gives its answer ("not committed here" once the runtime is gone).
    fn requested(
        self: &Arc<Self>,
        runtime: &Weak<Inner<S>>,
        packet: &str,
    ) -> Vec<BoxFuture<'static, Option<String>>> {
        match serde_json::from_str::<Envelope>(packet) {
            Ok(Envelope::Requests(requests)) => {
                *locked(&self.last_request) = Some(Instant::now());
                requests
                    .into_iter()
                    .map(|request| {
                        let (forwarding, runtime) = (self.clone(), runtime.upgrade());
                        let served: BoxFuture<'static, Option<String>> = Box::pin(async move {
                            match runtime {
                                Some(runtime) => forwarding.serve(runtime, request).await,
                                // Shutting down: "not committed here", so that its sender
                                // runs it at once instead of waiting out FORWARD_WAIT.
                                None => serde_json::to_string(&Answer {
                                    id: request.id,
                                    committed: None,
                                })
                                .ok(),
                            }
                        });
                        served
                    })
                    .collect()
            }
            Ok(Envelope::Answers(_)) => {
                tracing::debug!("answers where requests were due");
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "a forwarding packet did not parse");
                Vec::new()
            }
        }
    }

    /// Runs a command another process forwarded; its answer.
    async fn serve(self: Arc<Self>, runtime: Arc<Inner<S>>, request: Request) -> Option<String> {
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
        item.ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ADVERTISE_SQL;
    use crate::store::PostgresStore;
    use crate::testing::TestDatabase;

    pub(super) async fn forwarding() -> (TestDatabase, Arc<Forwarding<PostgresStore>>) {
        let db = TestDatabase::create().await.expect("a test database");
        let leases = Arc::new(Leases::new(db.store().await.expect("a store")));
        let bind = "127.0.0.1:0".parse().expect("an address");
        (db, Arc::new(Forwarding::new(HashMap::new(), leases, bind)))
    }

    #[tokio::test]
    async fn an_owner_that_cannot_be_reached_is_not_tried_again_at_once() {
        let (_db, f) = forwarding().await;
        // A port nothing listens on any more: connecting is refused.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let to = Peer::fresh(gone.local_addr().expect("bound"));
        drop(gone);
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = f
            .forward(to.clone(), "d", 7, "k1", Value::Null, deadline)
            .await;
        assert!(matches!(first, Forwarded::NoAnswer));
        assert_eq!(f.next_connection.load(Ordering::Relaxed), 1);
        let second = f
            .forward(to.clone(), "d", 7, "k2", Value::Null, deadline)
            .await;
        assert_eq!(
            f.next_connection.load(Ordering::Relaxed),
            1,
            "connected again to an owner found unreachable just before"
        );
        assert!(matches!(second, Forwarded::NotCommitted));
    }

    #[tokio::test]
    async fn an_owner_that_leaves_a_command_unanswered_is_not_waited_on_again_at_once() {
        let (_db, f) = forwarding().await;
        // Takes connections, reads nothing, answers nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let to = Peer::fresh(listener.local_addr().expect("bound"));
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                kept.push(stream);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = f
            .forward(to.clone(), "d", 7, "k1", Value::Null, deadline)
            .await;
        assert!(matches!(first, Forwarded::NoAnswer));
        let asked = f.next_id.load(Ordering::Relaxed);
        let second = f
            .forward(to.clone(), "d", 7, "k2", Value::Null, deadline)
            .await;
        assert!(
            matches!(second, Forwarded::NotCommitted),
            "run here at once"
        );
        assert_eq!(
            f.next_id.load(Ordering::Relaxed),
            asked,
            "sent to an owner that just left one unanswered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_does_not_forward_to_itself() {
        let (db, f) = forwarding().await;
        let serving = tokio::spawn(transport::serve(f.clone(), Weak::new(), f.bind));
        // Polled: the session is this process's own business (no event says it is up).
        let link = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(link) = f.link() {
                    break link;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the forwarding session within 10 s");
        let row = link
            .client
            .query_one(
                "SELECT token, address FROM dcb_forward_tokens WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("this session advertised");
        let (token, address): (String, String) = (row.get(0), row.get(1));
        // An earlier session of this process, lost on this side but not yet ended by the
        // server: it advertised the same token and address, and still holds the key.
        let earlier = db.client().await.expect("a session");
        earlier
            .execute(ADVERTISE_SQL, &[&token, &address])
            .await
            .expect("advertised");
        let key = 42u64;
        earlier
            .execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&OWNERS_SPACE, &lock_key(key)],
            )
            .await
            .expect("locked");
        let owner = f.owner_elsewhere(key).await;
        serving.abort();
        assert_eq!(owner, None, "this process would forward to itself");
    }
}
