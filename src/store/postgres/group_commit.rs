//! Group commit: the appender actor. Appends from every task queue in its mailbox; each `Flush`
//! sends whatever queued while the previous batch was committing as one call of `dcb_append`: one
//! statement, one transaction, one WAL flush for the whole batch. While other processes write to
//! the store too, a lone request waits a little for company (`linger.rs`).
//!
//! Writers are serialised by `dcb_append`'s advisory lock anyway (positions must follow commit
//! order), so batching is what lets concurrent appenders share a commit instead of queueing for it,
//! and one appender per store is enough (measured: 64 appenders, 9.8k appends/s with one writer,
//! 7.4k with two). A batch holds only requests independent of each other (see
//! [`take_independent`]), which lets `dcb_append` check and insert it with a few set-based
//! statements. The appender runs no user code; a semaphore bounds the appends in its care, since
//! ractor mailboxes are unbounded.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use uuid::Uuid;

use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position};
use crate::event_index::EventIndex;
use crate::metrics as names;

use super::leader::{Follower, LeaderWatch, Report, Reports};
use super::linger::{LINGER, Linger};

/// `now()` is the time of the statement's transaction: what `events.recorded_at` defaults to.
const APPEND_SQL: &str = "SELECT a.statuses, a.firsts, a.dups, now(), dcb_turns_held($20) \
    FROM dcb_append($1, $2, $3, $4, $5, $6, $7, $8::text[]::jsonb[], $9, $10, $11, $12, $13, $14, \
    $15, $16, $17, $18, $19) AS a";

/// A request's outcome, and which of its watched turn locks another session holds.
pub(super) type Answer = (Result<Appended, AppendError>, Vec<i32>);

/// One validated append, as handed to the appender.
pub(super) struct Append {
    pub(super) events: Vec<Event>,
    /// The events' payloads as JSON text, in order.
    pub(super) payloads: Vec<String>,
    pub(super) condition: Option<AppendCondition>,
    /// See [`crate::EventStore::append_as`].
    pub(super) append_id: Option<Uuid>,
    /// Turn locks (V6) to look at: the answer says which another session holds (V7).
    pub(super) watch: Vec<i32>,
    /// Others wait for its answer: it never waits for company (see `linger.rs`).
    pub(super) urgent: bool,
}

/// An append queued with the appender: where its answer goes.
pub(super) struct Request {
    pub(super) append: Append,
    pub(super) reply: oneshot::Sender<Answer>,
    /// Held until the request is answered or dropped.
    _slot: OwnedSemaphorePermit,
}

#[cfg(test)]
impl Request {
    /// A request appending `event`, conditioned on `condition`, and what receives its answer.
    pub(super) fn for_test(
        event: Event,
        condition: Option<crate::Query>,
    ) -> (Self, oneshot::Receiver<Answer>) {
        let slots = Arc::new(Semaphore::new(1));
        let (reply, answer) = oneshot::channel();
        let request = Self {
            append: Append {
                events: vec![event],
                payloads: vec!["{}".to_owned()],
                condition: condition.map(|q| AppendCondition::new(q, None)),
                append_id: None,
                watch: Vec::new(),
                urgent: false,
            },
            reply,
            _slot: slots.try_acquire_owned().expect("a free slot"),
        };
        (request, answer)
    }
}

#[cfg(test)]
impl GroupCommitter {
    /// An appender of batches of at most `max_batch` whose pool never connects (port 1).
    pub(super) async fn unconnected(max_batch: usize) -> Self {
        let config: tokio_postgres::Config = "host=127.0.0.1 port=1".parse().expect("a config");
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = Pool::builder(manager).max_size(1).build().expect("a pool");
        Self::start(pool, max_batch, None)
            .await
            .expect("an appender")
    }
}

/// The store's handle on its appender actor.
pub(super) struct GroupCommitter {
    submitter: Submitter,
}

/// Hands appends to the appender.
#[derive(Clone)]
pub(super) struct Submitter {
    appender: ActorRef<AppenderMsg>,
    slots: Arc<Semaphore>,
}

impl GroupCommitter {
    /// Starts the appender; it stops when this handle (the last clone of the store) is dropped.
    /// With a `follower`'s watch, it has the elected appender of the store's processes write its batches
    /// when there is one (`leader.rs`).
    pub(super) async fn start(
        pool: Pool,
        max_batch: usize,
        follower: Option<LeaderWatch>,
    ) -> Result<Self, StoreError> {
        // Series from the start: "no wait yet", not "no data".
        for outcome in ["company", "alone"] {
            metrics::counter!(names::APPEND_LINGERS_TOTAL, "outcome" => outcome).increment(0);
        }
        for outcome in ["written", "failed"] {
            metrics::counter!(names::APPENDS_SENT_TOTAL, "outcome" => outcome).increment(0);
        }
        metrics::counter!(names::APPEND_LEADERSHIPS_TOTAL).increment(0);
        let (appender, _) = Actor::spawn(None, Appender { pool, max_batch }, follower)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not start the appender");
                StoreError::Closed
            })?;
        Ok(Self {
            submitter: Submitter {
                appender,
                slots: Arc::new(Semaphore::new(max_batch * 4)),
            },
        })
    }

    pub(super) fn submitter(&self) -> &Submitter {
        &self.submitter
    }
}

impl Submitter {
    /// Queues one validated append and waits for its own outcome, and for which of the turn
    /// locks in its `watch` another session held when it was written. Waits first for room when
    /// `max_batch * 4` appends are already queued (backpressure).
    pub(super) async fn submit(&self, append: Append) -> Answer {
        match self.enqueue(append).await {
            Ok(outcome) => outcome.await,
            Err(closed) => closed,
        }
    }

    /// [`Self::submit`] in two steps: queues the append (waiting for room), then returns what
    /// waits for its outcome. Appends queued one after the other are taken in that order.
    pub(super) async fn enqueue(
        &self,
        append: Append,
    ) -> Result<impl Future<Output = Answer> + use<>, Answer> {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return Err((Err(StoreError::Closed.into()), Vec::new()));
        };
        self.queue(slot, append)
    }

    /// [`Self::enqueue`] without waiting for room: `None` when `max_batch * 4` appends are
    /// queued already.
    pub(super) fn try_enqueue(
        &self,
        append: Append,
    ) -> Option<Result<impl Future<Output = Answer> + use<>, Answer>> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        Some(self.queue(slot, append))
    }

    fn queue(
        &self,
        slot: OwnedSemaphorePermit,
        append: Append,
    ) -> Result<impl Future<Output = Answer> + use<>, Answer> {
        let closed = || (Err(StoreError::Closed.into()), Vec::new());
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            append,
            reply,
            _slot: slot,
        };
        if self
            .appender
            .send_message(AppenderMsg::Append(request))
            .is_err()
        {
            return Err(closed());
        }
        // The appender took the request and stopped before answering: committed or not, unknown.
        Ok(async move {
            outcome
                .await
                .unwrap_or_else(|_| (Err(StoreError::AnswerLost.into()), Vec::new()))
        })
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.submitter.appender.stop(None);
    }
}

struct Appender {
    pool: Pool,
    max_batch: usize,
}

enum AppenderMsg {
    Append(Request),
    /// Commit what is pending. Sent when the first request arrives into an empty queue, so it
    /// lands behind every append already in the mailbox: those join the batch.
    Flush,
    /// The wait of a lone request for company is over (the number tells which wait).
    LingerOver(u64),
    /// What became of a batch sent to the elected appender.
    FromLeader(Report),
}

struct AppenderState {
    /// Requests deferred from the previous batch first, then new ones, in arrival order.
    pending: VecDeque<Request>,
    flush_scheduled: bool,
    /// Requests per batch now: halved when a batch fails (a statement timeout a big batch
    /// cannot meet would otherwise fail every retry, each batch bigger than the last), grown back
    /// by one per committed batch up to `max_batch`.
    limit: usize,
    linger: Linger,
    /// The wait of a lone request for company, under way (see `linger.rs`).
    lingering: Option<u64>,
    lingered: u64,
    /// Sends batches to the appender elected by the store's processes, when another one is.
    follower: Option<Follower>,
}

impl AppenderState {
    fn schedule_flush(&mut self, myself: &ActorRef<AppenderMsg>) -> Result<(), ActorProcessingErr> {
        if !self.flush_scheduled && self.lingering.is_none() && !self.pending.is_empty() {
            self.flush_scheduled = true;
            myself.send_message(AppenderMsg::Flush)?;
        }
        Ok(())
    }
}

impl Actor for Appender {
    type Msg = AppenderMsg;
    type State = AppenderState;
    type Arguments = Option<LeaderWatch>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        leader: Option<LeaderWatch>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let follower = leader.map(|leader| {
            let reports: Reports = Arc::new(move |report| {
                // Gone: the requests' callers learn the answer is lost.
                let _ = myself.send_message(AppenderMsg::FromLeader(report));
            });
            Follower::new(leader, reports)
        });
        Ok(AppenderState {
            pending: VecDeque::with_capacity(self.max_batch),
            flush_scheduled: false,
            limit: self.max_batch,
            linger: Linger::default(),
            lingering: None,
            lingered: 0,
            follower,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AppenderMsg::Append(request) => {
                state.pending.push_back(request);
                if state.lingering.is_some() && state.pending.len() > 1 {
                    // Company came: the flush scheduled below lands behind the appends already
                    // in the mailbox, which join the batch too.
                    state.lingering = None;
                    metrics::counter!(names::APPEND_LINGERS_TOTAL, "outcome" => "company")
                        .increment(1);
                }
            }
            AppenderMsg::Flush => {
                state.flush_scheduled = false;
                let lone_patient = state.pending.len() == 1
                    && state
                        .pending
                        .front()
                        .is_some_and(|request| !request.append.urgent);
                // Sent to the elected appender, it waits for company there; one watching turn
                // locks is written here (`leader.rs`), so it waits here as it would without one.
                let sending = state.follower.as_ref().is_some_and(Follower::leader_known)
                    && state
                        .pending
                        .front()
                        .is_some_and(|r| r.append.watch.is_empty());
                if lone_patient && !sending && state.linger.now() {
                    state.lingered += 1;
                    state.lingering = Some(state.lingered);
                    let wait = state.lingered;
                    myself.send_after(LINGER, move || AppenderMsg::LingerOver(wait));
                } else {
                    self.write(state).await;
                }
            }
            AppenderMsg::FromLeader(Report::Unanswered(batch)) => {
                // Written here, now, under the same append ids: what the leader did store
                // answers as a re-send.
                if let Some(stored) = commit_and_answer(&self.pool, batch).await {
                    state.linger.committed(&stored);
                }
            }
            AppenderMsg::FromLeader(Report::Stored(stored)) => state.linger.committed(&stored),
            AppenderMsg::LingerOver(wait) => {
                if state.lingering == Some(wait) {
                    state.lingering = None;
                    metrics::counter!(names::APPEND_LINGERS_TOTAL, "outcome" => "alone")
                        .increment(1);
                    self.write(state).await;
                }
            }
        }
        state.schedule_flush(&myself)
    }
}

impl Appender {
    /// Commits a batch of what is pending.
    async fn write(&self, state: &mut AppenderState) {
        let mut batch = take_independent(&mut state.pending, state.limit);
        // Only while other processes write too: the hop to the leader buys a shared disk sync,
        // which a process writing alone (the owner of a hot key, say) has already.
        if state.linger.now()
            && let Some(follower) = &mut state.follower
        {
            match follower.send(batch).await {
                Ok(()) => return,
                Err(unsent) => batch = unsent,
            }
        }
        match commit_and_answer(&self.pool, batch).await {
            Some(stored) => {
                state.limit = (state.limit + 1).min(self.max_batch);
                state.linger.committed(&stored);
            }
            None => state.limit = (state.limit / 2).max(1),
        }
    }
}

/// Commits the batch and answers each request; the first and last positions of the appends it
/// stored, or `None` if the transaction failed.
async fn commit_and_answer(pool: &Pool, batch: Vec<Request>) -> Option<Vec<(i64, i64)>> {
    #[allow(clippy::cast_precision_loss)] // batch sizes are small
    metrics::histogram!(names::APPEND_BATCH_SIZE).record(batch.len() as f64);
    let started = Instant::now();
    let committed = commit(pool, &batch).await;
    metrics::histogram!(names::APPEND_DURATION_SECONDS).record(started.elapsed());
    match committed {
        Ok((outcomes, held)) => {
            let stored = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .filter(|a| a.recorded_at.is_some())
                .map(|a| (a.first.get(), a.last.get()))
                .collect();
            for (request, outcome) in batch.into_iter().zip(outcomes) {
                let held_here = request
                    .append
                    .watch
                    .iter()
                    .copied()
                    .filter(|lock| held.contains(lock))
                    .collect();
                // The caller may have gone away; its events are stored all the same.
                let _ = request.reply.send((outcome, held_here));
            }
            Some(stored)
        }
        Err(e) => {
            // The whole batch failed (or its commit is unknown): every caller learns it, and may
            // re-send, which event ids make idempotent.
            for request in batch {
                let _ = request
                    .reply
                    .send((Err(AppendError::Store(e.clone())), Vec::new()));
            }
            None
        }
    }
}

/// Takes from `pending`, in order, up to `max` requests that do not depend on each other: none
/// has a condition matching an event of an earlier one taken, and none shares an event id with
/// one taken. The rest stay in `pending` for the next batch, where they see the taken ones as
/// committed. That keeps `dcb_append` set-based: each request is checked against the store alone.
fn take_independent(pending: &mut VecDeque<Request>, max: usize) -> Vec<Request> {
    let mut taken: Vec<Request> = Vec::with_capacity(max.min(pending.len()));
    let mut deferred = VecDeque::new();
    let mut seen = BatchIndex::default();
    while let Some(request) = pending.pop_front() {
        if taken.len() == max {
            deferred.push_back(request);
            continue;
        }
        if seen.conflicts_with(&request, &taken) {
            deferred.push_back(request);
        } else {
            seen.add(&request);
            taken.push(request);
        }
    }
    *pending = deferred;
    taken
}

/// What the requests taken so far contain, to rule out dependencies without comparing every
/// pair: an item can only match a taken event if its first tag (or, for type-only items, one of
/// its types) occurs among the taken events.
#[derive(Default)]
struct BatchIndex {
    ids: HashSet<Uuid>,
    events: EventIndex,
}

impl BatchIndex {
    fn add(&mut self, request: &Request) {
        for e in &request.append.events {
            self.ids.insert(e.id());
            self.events.add(e);
        }
    }

    fn conflicts_with(&self, request: &Request, taken: &[Request]) -> bool {
        if request
            .append
            .events
            .iter()
            .any(|e| self.ids.contains(&e.id()))
        {
            return true;
        }
        let Some(condition) = &request.append.condition else {
            return false;
        };
        let query = &condition.fail_if_events_match;
        if taken.is_empty() {
            return false;
        }
        self.events.may_match(query)
            && taken
                .iter()
                .flat_map(|t| &t.append.events)
                .any(|e| query.matches(e))
    }
}

/// The batch as the flattened arrays `dcb_append` takes.
#[derive(Default)]
struct Encoded<'a> {
    ev_req: Vec<i32>,
    ev_offset: Vec<i32>,
    ev_ids: Vec<Uuid>,
    ev_types: Vec<&'a str>,
    ev_tags: Vec<String>,
    ev_tag_starts: Vec<i32>,
    ev_tag_counts: Vec<i32>,
    ev_payloads: Vec<&'a str>,
    req_event_counts: Vec<i32>,
    req_conditional: Vec<bool>,
    req_after: Vec<Option<i64>>,
    item_req: Vec<i32>,
    item_types: Vec<&'a str>,
    item_type_starts: Vec<i32>,
    item_type_counts: Vec<i32>,
    item_tags: Vec<String>,
    item_tag_starts: Vec<i32>,
    item_tag_counts: Vec<i32>,
    req_append_ids: Vec<Option<Uuid>>,
}

/// Array lengths and 1-based offsets as `int`. Validation caps events, tags and items far below
/// `i32::MAX`.
fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl<'a> Encoded<'a> {
    fn new(batch: &'a [Request]) -> Self {
        let mut enc = Encoded::default();
        for (r, request) in batch.iter().enumerate() {
            let r = int(r + 1);
            enc.req_event_counts.push(int(request.append.events.len()));
            enc.req_append_ids.push(request.append.append_id);
            for (offset, (event, payload)) in request
                .append
                .events
                .iter()
                .zip(&request.append.payloads)
                .enumerate()
            {
                enc.ev_req.push(r);
                enc.ev_offset.push(int(offset));
                enc.ev_ids.push(event.id());
                enc.ev_types.push(event.event_type());
                enc.ev_tag_starts.push(int(enc.ev_tags.len() + 1));
                enc.ev_tag_counts.push(int(event.tags().len()));
                enc.ev_tags
                    .extend(event.tags().iter().map(ToString::to_string));
                enc.ev_payloads.push(payload);
            }
            let Some(condition) = &request.append.condition else {
                enc.req_conditional.push(false);
                enc.req_after.push(None);
                continue;
            };
            enc.req_conditional.push(true);
            enc.req_after.push(condition.after.map(Position::get));
            let query = &condition.fail_if_events_match;
            if query.is_all() {
                // An item naming nothing stands for Query::all() in dcb_append.
                enc.item_req.push(r);
                enc.item_type_starts.push(int(enc.item_types.len() + 1));
                enc.item_type_counts.push(0);
                enc.item_tag_starts.push(int(enc.item_tags.len() + 1));
                enc.item_tag_counts.push(0);
                continue;
            }
            for item in query.items() {
                enc.item_req.push(r);
                enc.item_type_starts.push(int(enc.item_types.len() + 1));
                enc.item_type_counts.push(int(item.types().len()));
                enc.item_types
                    .extend(item.types().iter().map(String::as_str));
                enc.item_tag_starts.push(int(enc.item_tags.len() + 1));
                enc.item_tag_counts.push(int(item.tags().len()));
                enc.item_tags
                    .extend(item.tags().iter().map(ToString::to_string));
            }
        }
        enc
    }
}

/// Writes the batch in one statement and maps each request's row to its outcome; also answers
/// which of the requests' watched turn locks another session holds.
async fn commit(
    pool: &Pool,
    batch: &[Request],
) -> Result<(Vec<Result<Appended, AppendError>>, Vec<i32>), StoreError> {
    commit_on(&pool.get().await?, batch).await
}

/// Makes `client` ready to append: its statement prepared and every statement of `dcb_append`
/// planned in its backend, by a batch of no request (it stores nothing).
pub(super) async fn warm(client: &deadpool_postgres::Client) -> Result<(), StoreError> {
    commit_on(client, &[]).await.map(drop)
}

/// [`commit`] on `client`.
async fn commit_on(
    client: &deadpool_postgres::Client,
    batch: &[Request],
) -> Result<(Vec<Result<Appended, AppendError>>, Vec<i32>), StoreError> {
    let enc = Encoded::new(batch);
    let mut watch: Vec<i32> = batch
        .iter()
        .flat_map(|r| r.append.watch.iter().copied())
        .collect();
    watch.sort_unstable();
    watch.dedup();
    let statement = client.prepare_cached(APPEND_SQL).await?;
    let rows = client
        .query(
            &statement,
            &[
                &enc.ev_req,
                &enc.ev_offset,
                &enc.ev_ids,
                &enc.ev_types,
                &enc.ev_tags,
                &enc.ev_tag_starts,
                &enc.ev_tag_counts,
                &enc.ev_payloads,
                &enc.req_event_counts,
                &enc.req_conditional,
                &enc.req_after,
                &enc.item_req,
                &enc.item_types,
                &enc.item_type_starts,
                &enc.item_type_counts,
                &enc.item_tags,
                &enc.item_tag_starts,
                &enc.item_tag_counts,
                &enc.req_append_ids,
                &watch,
            ],
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("dcb_append answered no row".to_owned()))?;
    let statuses: Vec<i16> = row.try_get(0)?;
    let firsts: Vec<Option<i64>> = row.try_get(1)?;
    let dups: Vec<Option<Uuid>> = row.try_get(2)?;
    let recorded_at: std::time::SystemTime = row.try_get(3)?;
    let held: Vec<i32> = row.try_get(4)?;
    if statuses.len() != batch.len() || firsts.len() != batch.len() || dups.len() != batch.len() {
        return Err(StoreError::Corrupt(format!(
            "dcb_append answered {} statuses for {} requests",
            statuses.len(),
            batch.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (((status, first), dup), request) in statuses.into_iter().zip(firsts).zip(dups).zip(batch) {
        let status = Status::try_from(status)?;
        let at = |first: i64, replayed: bool, stored_now: bool| {
            let n = i64::try_from(request.append.events.len()).unwrap_or(i64::MAX);
            Appended {
                first: Position::new(first),
                last: Position::new(first + n - 1),
                replayed,
                recorded_at: stored_now.then_some(recorded_at),
            }
        };
        outcomes.push(match (status, first, dup) {
            (Status::Appended, Some(first), _) => {
                metrics::counter!(names::EVENTS_APPENDED_TOTAL)
                    .increment(request.append.events.len() as u64);
                Ok(at(first, false, true))
            }
            (Status::Replayed, Some(first), _) => Ok(at(first, true, false)),
            (Status::Resent, Some(first), _) => Ok(at(first, false, false)),
            (Status::ConditionFailed, _, _) => Err(AppendError::ConditionFailed {
                after: request.append.condition.as_ref().and_then(|c| c.after),
            }),
            (Status::DuplicateId, _, Some(id)) => Err(AppendError::DuplicateEventId(id)),
            (status, first, dup) => {
                return Err(StoreError::Corrupt(format!(
                    "dcb_append answered {status:?} with first {first:?} and duplicate {dup:?}"
                )));
            }
        });
    }
    Ok((outcomes, held))
}

/// What `dcb_append` answers for one request (its `statuses` array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Stored at `firsts[r]`.
    Appended,
    /// The condition failed; nothing stored.
    ConditionFailed,
    /// Stored before by another identical append, at `firsts[r]`.
    Replayed,
    /// An event id is stored with other content, or only part of the request is (`dups[r]`).
    DuplicateId,
    /// Stored before by this same append (same `append_id`), at `firsts[r]`: a re-send.
    Resent,
}

impl TryFrom<i16> for Status {
    type Error = StoreError;

    fn try_from(status: i16) -> Result<Self, StoreError> {
        Ok(match status {
            0 => Self::Appended,
            1 => Self::ConditionFailed,
            2 => Self::Replayed,
            3 => Self::DuplicateId,
            4 => Self::Resent,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "dcb_append answered status {other}"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;
    use crate::query::{Query, QueryItem};

    /// A request appending one `T` event tagged `k:<tag>`, conditioned on `condition`.
    fn request(id: u128, tag: &str, condition: Option<Query>) -> Request {
        let event = Event::new("T", serde_json::json!({}))
            .tagged("k", tag)
            .with_id(Uuid::from_u128(id));
        Request::for_test(event, condition).0
    }

    fn on(tag: &str) -> Option<Query> {
        Some(QueryItem::new(["T"], [P("k", tag)]).into())
    }

    fn ids(requests: &[Request]) -> Vec<u128> {
        requests
            .iter()
            .map(|r| r.append.events[0].id().as_u128())
            .collect()
    }

    #[test]
    fn independent_requests_are_taken_in_order() {
        let mut pending: VecDeque<Request> = (1..=4)
            .map(|i| request(i, &i.to_string(), on(&i.to_string())))
            .collect();
        let taken = take_independent(&mut pending, 10);
        assert_eq!(ids(&taken), [1, 2, 3, 4]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_request_whose_condition_matches_a_taken_event_waits_for_the_next_batch() {
        let mut pending: VecDeque<Request> = [
            request(1, "a", on("a")),
            request(2, "a", on("a")), // would not see 1 committed
            request(3, "b", on("b")),
            request(4, "b", None),    // unconditional: depends on nothing
            request(5, "c", on("b")), // its condition matches 3 (and 4)
        ]
        .into();
        let taken = take_independent(&mut pending, 10);
        assert_eq!(ids(&taken), [1, 3, 4]);
        assert_eq!(ids(pending.make_contiguous()), [2, 5], "deferred, in order");
        // Next batch: they see the others committed and no longer depend on anything pending.
        let taken = take_independent(&mut pending, 10);
        assert_eq!(ids(&taken), [2, 5]);
    }

    #[test]
    fn a_condition_on_another_tag_or_type_does_not_wait() {
        let other_type: Query = QueryItem::new(["U"], [P("k", "a")]).into();
        let mut pending: VecDeque<Request> = [
            request(1, "a", on("a")),
            request(2, "b", Some(other_type)),
            request(3, "c", on("d")),
        ]
        .into();
        assert_eq!(ids(&take_independent(&mut pending, 10)), [1, 2, 3]);
    }

    #[test]
    fn shared_ids_and_a_condition_on_everything_wait() {
        let mut pending: VecDeque<Request> = [
            request(1, "a", None),
            request(1, "b", None), // the same event id: a replay must see the first committed
            request(2, "c", Some(Query::all())),
            request(3, "d", on("d")),
        ]
        .into();
        let taken = take_independent(&mut pending, 10);
        assert_eq!(ids(&taken), [1, 3]);
        assert_eq!(ids(pending.make_contiguous()), [1, 2]);
        // Alone in a batch, a condition on everything goes (the batch has nothing to match).
        let mut alone: VecDeque<Request> = [request(2, "c", Some(Query::all()))].into();
        assert_eq!(ids(&take_independent(&mut alone, 10)), [2]);
    }

    #[test]
    fn at_most_max_are_taken_and_the_rest_keep_their_order() {
        let mut pending: VecDeque<Request> =
            (1..=5).map(|i| request(i, &i.to_string(), None)).collect();
        assert_eq!(ids(&take_independent(&mut pending, 2)), [1, 2]);
        assert_eq!(ids(pending.make_contiguous()), [3, 4, 5]);
    }

    #[tokio::test]
    async fn try_enqueue_refuses_when_the_appender_is_full_instead_of_waiting() {
        let committer = GroupCommitter::unconnected(1).await;
        let submitter = committer.submitter();
        let append = || Append {
            events: vec![Event::new("T", serde_json::json!({}))],
            payloads: vec!["{}".to_owned()],
            condition: None,
            append_id: None,
            watch: Vec::new(),
            urgent: false,
        };
        // Every slot taken (`max_batch * 4`), as by appends waiting for their answers.
        let held = submitter
            .slots
            .clone()
            .acquire_many_owned(4)
            .await
            .expect("the slots");
        assert!(submitter.try_enqueue(append()).is_none());
        drop(held);
        assert!(submitter.try_enqueue(append()).is_some(), "room again");
    }
}
