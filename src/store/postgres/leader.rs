//! One appender for every process of a store: the processes elect one, and the others send it
//! their batches, so that one transaction, and one disk sync, carries the appends of all of them.
//!
//! Why: `dcb_append` serialises every writer with one lock held until its commit is on disk
//! (positions follow commit order). Each process's appender writes its own batches, so with four
//! processes four transactions follow each other through that lock where one process writes one,
//! each a quarter of the size: `disjoint` at 4 processes ran at 0.67-0.74x of one process, its
//! writers waiting for the lock half the time, the holder in its disk sync more than half of its
//! (sampled in `pg_stat_activity`).
//!
//! - **Election**: each process holds a session of its own that tries the session advisory lock
//!   `('DCBL', 0)`: every [`RECHECK`] while it knows of no leader, every [`RECHECK_LED`] while
//!   it does (each try reads `pg_locks`, which is not free), and at once when its connection to
//!   the leader fails. Whoever holds it is the leader; the lock ends with its session, so a
//!   leader that dies (even by SIGKILL: its socket closes, the server ends the session) is
//!   replaced within about [`RECHECK`] of another process noticing. Meanwhile every process
//!   writes its own appends. No consensus of our own: PostgreSQL's lock.
//! - **Where**: the session advertises its address and token (`peer.rs`) before it tries the
//!   lock: only roles that may read the database's tables learn the token, so only they can send
//!   appends.
//! - **Sending**: a follower's appender sends each batch as one line of JSON as soon as it is
//!   taken, without waiting for the answers to those before; one task reads the answers' lines,
//!   in order. The leader submits each append to its own appender in the order they arrive,
//!   where they join its batches; its appender defers an append that depends on an earlier one
//!   to its next transaction, so a follower's later batches see its earlier ones committed, as
//!   when it writes them itself.
//! - **Nothing depends on it**: whatever goes wrong (no leader, a connection lost, an answer late
//!   by [`ANSWER_WAIT`], the leader's transaction failed), the follower writes the batch itself,
//!   under the same append ids, which `dcb_append` recognises: an append the leader did store
//!   answers as a re-send, with its positions. Nothing is stored twice, nothing lost. A link
//!   that ends or is replaced (the leader changed) gives back at once what it had out, and a
//!   leader that cannot be reached is not tried again for [`RECHECK_LED`] (each try holds up
//!   the process's appender for up to a second).

mod wire;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::group_commit::{Answer, Append, Request, Submitter};
use super::session::Session;
use crate::lines::{IDLE_WAIT, accept_with_token, connect_with_token, read_line_into};
use crate::metrics as names;
use crate::peer::{ADVERTISE_SQL, Peer};
use wire::{WireAnswer, WireAppend, WireEvent};

/// The key space of the leader's lock: 'DCBL'.
const LEADER_SPACE: i32 = 0x4443_424C;

/// How often a process that knows of no leader tries to become it, and looks up where it is.
const RECHECK: Duration = Duration::from_millis(250);

/// The same, while another process leads (a leader that dies is noticed sooner: the follower's
/// connection to it fails, which asks for a try at once).
const RECHECK_LED: Duration = Duration::from_secs(2);

/// How long a follower waits for a batch's answers before writing the batch itself. Longer than
/// a busy leader's transaction; a leader that died closes its socket and is noticed at once.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How long a write may wait for the peer to read before the connection closes.
const WRITE_WAIT: Duration = Duration::from_millis(500);

/// The longest batch line taken (appends are validated against the store's limits before;
/// this only bounds what one connection can make the leader hold).
const MAX_LINE: u64 = 256 * 1024 * 1024;

/// This process's part in the election; it leaves it when dropped (its session ends, and with
/// it the leader's lock, if it held it).
pub(super) struct Leadership {
    task: JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A follower's side: where the leader is, and the connection to it.
pub(super) struct Follower {
    leader: watch::Receiver<Option<Peer>>,
    /// Asks the election for a try at once (the connection to the leader failed).
    recheck: Arc<Notify>,
    link: Option<Link>,
    /// A leader this process could not connect to, and when.
    unreachable: Option<(Peer, Instant)>,
    reports: Reports,
}

/// The election's news: the leader's address while another process leads.
pub(super) struct LeaderNews {
    leader: watch::Sender<Option<Peer>>,
    /// A follower's connection to the leader failed: try the lock now.
    recheck: Arc<Notify>,
}

/// What a follower learns of the election.
pub(super) struct LeaderWatch {
    leader: watch::Receiver<Option<Peer>>,
    recheck: Arc<Notify>,
}

/// The two ends of the election's news, before anyone is elected.
pub(super) fn news() -> (LeaderWatch, LeaderNews) {
    let (news, leader) = watch::channel(None);
    let recheck = Arc::new(Notify::new());
    (
        LeaderWatch {
            leader,
            recheck: recheck.clone(),
        },
        LeaderNews {
            leader: news,
            recheck,
        },
    )
}

impl Leadership {
    /// Takes part in the election on the database of `config`, taking appends on `bind` while
    /// leading and writing them through `submitter`; tells the follower where the leader is.
    pub(super) fn start(
        config: tokio_postgres::Config,
        bind: SocketAddr,
        submitter: Submitter,
        news: LeaderNews,
    ) -> Self {
        Self {
            task: tokio::spawn(run(config, bind, submitter, news)),
        }
    }
}

async fn run(
    config: tokio_postgres::Config,
    bind: SocketAddr,
    submitter: Submitter,
    news: LeaderNews,
) {
    // Without a listener this process cannot lead, but it still follows: sending needs none.
    let listening = TcpListener::bind(bind)
        .await
        .and_then(|listener| Ok((listener.local_addr()?, listener)));
    // Dropped (and so aborted) with this task.
    let mut accepting = JoinSet::new();
    let me = match listening {
        Ok((socket, listener)) => {
            let me = Peer::fresh(socket);
            accepting.spawn(accept(listener, me.token.clone(), submitter));
            Some(me)
        }
        Err(e) => {
            tracing::warn!(error = %e, %bind, "cannot take appends of other processes: no listener");
            None
        }
    };
    let mut failures = 0u32;
    loop {
        match elect(&config, me.as_ref(), &news).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "the appender election's session failed");
            }
        }
        news.leader.send_replace(None);
        tokio::time::sleep(Duration::from_millis(50u64 << failures.min(5))).await;
    }
}

/// Opens this process's election session and, on it, leads or follows until it ends; only
/// follows without `me` (where it would take appends).
async fn elect(
    config: &tokio_postgres::Config,
    me: Option<&Peer>,
    news: &LeaderNews,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = Session::config(config).connect(NoTls).await?;
    let mut connection = std::pin::pin!(connection);
    let work = async {
        // Before this session can hold the lock: whoever finds it leading finds where it is.
        if let Some(me) = me {
            client
                .execute(ADVERTISE_SQL, &[&me.token, &me.socket])
                .await?;
        }
        let look_up = client
            .prepare(
                "SELECT CASE WHEN $2 THEN pg_try_advisory_lock($1, 0) ELSE false END, \
                        (SELECT ARRAY[t.address, t.token] FROM pg_locks l \
                           JOIN dcb_forward_tokens t ON t.pid = l.pid \
                         WHERE l.locktype = 'advisory' AND l.objsubid = 2 \
                           AND l.database = (SELECT oid FROM pg_database \
                                             WHERE datname = current_database()) \
                           AND l.classid::bigint = $1::bigint AND l.objid = 0 \
                           AND l.granted AND l.pid <> pg_backend_pid() \
                           AND t.address IS NOT NULL LIMIT 1)",
            )
            .await?;
        loop {
            let row = client
                .query_one(&look_up, &[&LEADER_SPACE, &me.is_some()])
                .await?;
            if let Some(me) = me
                && row.try_get::<_, bool>(0)?
            {
                news.leader.send_replace(None);
                metrics::counter!(names::APPEND_LEADERSHIPS_TOTAL).increment(1);
                tracing::debug!(address = %me.socket, "this process writes every process's appends");
                // Leads as long as the session lasts.
                return std::future::pending().await;
            }
            let holder: Option<Vec<String>> = row.try_get(1)?;
            // Not this process: an earlier session of its own, lost by this side but not yet
            // ended by the server, may still hold the lock (sending to itself, its appends
            // would go round until the slots ran out).
            let leader = holder
                .and_then(|h| Peer::parse(h.first()?, h.get(1)?))
                .filter(|leader| me.is_none_or(|me| leader.token != me.token));
            let wait = if leader.is_some() {
                RECHECK_LED
            } else {
                RECHECK
            };
            news.leader.send_if_modified(|known| {
                let changed = *known != leader;
                known.clone_from(&leader);
                changed
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = news.recheck.notified() => {}
            }
        }
    };
    tokio::select! {
        worked = work => worked,
        ended = &mut connection => ended,
    }
}

/// Takes followers' connections.
async fn accept(listener: TcpListener, token: String, submitter: Submitter) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, token.clone(), submitter.clone()));
                }
                Err(e) => {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tracing::debug!(error = %e, "could not accept a follower's connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A follower's connection: its token first, then batches, each answered on it.
async fn serve(stream: TcpStream, token: String, submitter: Submitter) {
    let Some((mut reader, mut write)) = accept_with_token(stream, &token).await else {
        tracing::debug!("a connection without this process's token: closed");
        return;
    };
    let mut line = Vec::new();
    // Batches are read, and their appends queued, in the order they come, while earlier ones
    // are written: a follower sends its next batch without waiting for the answers.
    let mut writing = FuturesOrdered::new();
    loop {
        tokio::select! {
            read = read_line_into(&mut reader, &mut line, MAX_LINE) => {
                if !matches!(read, Ok(true)) {
                    return;
                }
                let Ok(batch) = serde_json::from_slice::<Vec<WireAppend>>(&line) else {
                    tracing::debug!("a follower's batch that does not parse: closed");
                    return;
                };
                line.clear();
                let outcomes: Vec<_> = batch
                    .into_iter()
                    .map(|append| queue_one(&submitter, append))
                    .collect();
                writing.push_back(join_all(outcomes));
            }
            () = tokio::time::sleep(IDLE_WAIT), if writing.is_empty() => {
                tracing::debug!("a follower's connection idle for {IDLE_WAIT:?}: closed");
                return;
            }
            Some(answers) = writing.next(), if !writing.is_empty() => {
                let Ok(mut out) = serde_json::to_vec(&answers) else {
                    return;
                };
                out.push(b'\n');
                let written = tokio::time::timeout(WRITE_WAIT, write.write_all(&out)).await;
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}

/// Queues one of a follower's appends with this process's own; what answers it. Not written
/// when this process's appender is full: waiting for room here would hold up the answers
/// ready for the batches before (and every batch after), and the follower writes it itself.
fn queue_one(submitter: &Submitter, append: WireAppend) -> BoxFuture<'static, WireAnswer> {
    let mut events = Vec::with_capacity(append.events.len());
    let mut payloads = Vec::with_capacity(append.events.len());
    for event in append.events {
        let Some((event, payload)) = event.into_event() else {
            return futures::future::ready(WireAnswer::NotWritten).boxed();
        };
        events.push(event);
        payloads.push(payload);
    }
    // Urgent: the follower waited for company already, and waits for this answer.
    let queued = submitter.try_enqueue(Append {
        events,
        payloads,
        condition: append.condition.map(Into::into),
        append_id: Some(append.append_id),
        watch: Vec::new(),
        urgent: true,
    });
    match queued {
        Some(Ok(outcome)) => outcome.map(|(answer, _)| WireAnswer::from(&answer)).boxed(),
        Some(Err((answer, _))) => futures::future::ready(WireAnswer::from(&answer)).boxed(),
        None => futures::future::ready(WireAnswer::NotWritten).boxed(),
    }
}

/// What a follower tells its appender of the batches it sent.
pub(super) enum Report {
    /// The leader did not answer these: the appender writes them itself, in the order they come.
    Unanswered(Vec<Request>),
    /// The leader stored the fresh appends of a batch at these first and last positions: whether
    /// other processes write too shows in them (`linger.rs`).
    Stored(Vec<(i64, i64)>),
}

/// Where a follower's reports go: its appender.
pub(super) type Reports = Arc<dyn Fn(Report) + Send + Sync>;

/// A batch sent, waiting for its answers.
struct Sent {
    batch: Vec<Request>,
    deadline: Instant,
}

/// A follower's connection to the leader. Batches go out as soon as they are taken, without
/// waiting for the answers of those before (the leader's appender keeps them in order and
/// defers one depending on another to its next transaction); one task reads the answers, in
/// the order the batches went.
struct Link {
    to: Peer,
    writer: OwnedWriteHalf,
    sent: Arc<Mutex<Outstanding>>,
    /// Tells the reader a batch was sent: it waits for that one's answers no longer than its
    /// deadline, even if it started waiting before.
    pushed: Arc<Notify>,
    reader: JoinHandle<()>,
    reports: Reports,
}

/// The batches sent on a link and not answered yet, oldest first. Closed when the link ends,
/// under the same lock as the batches are given back, so that none is queued on a link nobody
/// reads any more.
#[derive(Default)]
struct Outstanding {
    batches: VecDeque<Sent>,
    closed: bool,
}

/// Ends a link's queue: every batch not answered goes back to be written here.
fn give_back(sent: &Mutex<Outstanding>, reports: &Reports) {
    let unanswered: Vec<Sent> = {
        let mut outstanding = locked(sent);
        outstanding.closed = true;
        outstanding.batches.drain(..).collect()
    };
    for Sent { batch, .. } in unanswered {
        metrics::counter!(names::APPENDS_SENT_TOTAL, "outcome" => "failed")
            .increment(batch.len() as u64);
        reports(Report::Unanswered(batch));
    }
}

/// A link replaced (the leader changed) or failed: what it had out is written here, at once.
impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        give_back(&self.sent, &self.reports);
    }
}

impl Link {
    async fn open(to: &Peer, reports: Reports) -> Option<Self> {
        let stream = match connect_with_token(&to.socket, &to.token).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, to = %to.socket, "could not connect to the appender");
                return None;
            }
        };
        let (read, writer) = stream.into_split();
        let sent = Arc::new(Mutex::new(Outstanding::default()));
        let pushed = Arc::new(Notify::new());
        let reader = tokio::spawn(read_answers(
            BufReader::new(read),
            sent.clone(),
            pushed.clone(),
            reports.clone(),
        ));
        Some(Self {
            to: to.clone(),
            writer,
            sent,
            pushed,
            reader,
            reports,
        })
    }

    /// Whether the link still works: its reader closes it when anything fails.
    fn open_still(&self) -> bool {
        !locked(&self.sent).closed
    }
}

/// Answers the batches sent on a link, in order, until the link fails; then gives back every
/// batch not answered, oldest first.
async fn read_answers(
    mut reader: BufReader<OwnedReadHalf>,
    sent: Arc<Mutex<Outstanding>>,
    pushed: Arc<Notify>,
    reports: Reports,
) {
    let mut line = Vec::new();
    loop {
        let deadline = locked(&sent).batches.front().map(|s| s.deadline);
        // The oldest batch's answers come first; with none sent, only an end can come.
        let late = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            read = read_line_into(&mut reader, &mut line, MAX_LINE) => read,
            // Sent meanwhile: wait again, to that batch's deadline (the read keeps what it read).
            () = pushed.notified() => continue,
            // Late: the leader is stalled, or swamped.
            () = late => break,
        };
        if !matches!(read, Ok(true)) {
            break;
        }
        let answers: Option<Vec<WireAnswer>> = serde_json::from_slice(&line).ok();
        line.clear();
        let Some(Sent { batch, .. }) = locked(&sent).batches.pop_front() else {
            break; // An answer to nothing sent: not our leader.
        };
        let answers: Option<Vec<Answer>> =
            answers.filter(|a| a.len() == batch.len()).and_then(|a| {
                a.into_iter()
                    .map(|a| a.into_result().map(|result| (result, Vec::new())))
                    .collect()
            });
        let Some(answers) = answers else {
            // Not written (or garbled): this process writes the batch itself.
            metrics::counter!(names::APPENDS_SENT_TOTAL, "outcome" => "failed")
                .increment(batch.len() as u64);
            reports(Report::Unanswered(batch));
            continue;
        };
        let stored = answers
            .iter()
            .filter_map(|(a, _)| a.as_ref().ok())
            .filter(|a| a.recorded_at.is_some())
            .map(|a| (a.first.get(), a.last.get()))
            .collect();
        reports(Report::Stored(stored));
        metrics::counter!(names::APPENDS_SENT_TOTAL, "outcome" => "written")
            .increment(batch.len() as u64);
        for (request, answer) in batch.into_iter().zip(answers) {
            // The caller may have gone away; its events are stored all the same.
            let _ = request.reply.send(answer);
        }
    }
    // What comes on this connection no longer matches what was sent: give everything back.
    give_back(&sent, &reports);
}

/// Locks `m`. Nothing panics while it is held, so a poisoned one is still consistent.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Follower {
    /// A follower that learns where the leader is from `leader`, and tells its appender about
    /// what it sent through `reports`.
    pub(super) fn new(leader: LeaderWatch, reports: Reports) -> Self {
        Self {
            leader: leader.leader,
            recheck: leader.recheck,
            link: None,
            unreachable: None,
            reports,
        }
    }

    /// Whether another process is the elected appender (this one sends it batches).
    pub(super) fn leader_known(&self) -> bool {
        self.leader.borrow().is_some()
    }

    /// Has the leader write `batch`: `Ok` once it is sent (its requests are answered when the
    /// leader answers, or go back through `returned` to be written here if it does not); `Err`
    /// with the batch when this process leads, no leader is known or it cannot be reached: the
    /// caller writes it itself. Requests without an append id get one first, so that writing
    /// them again after the leader did is recognised as a re-send.
    pub(super) async fn send(&mut self, mut batch: Vec<Request>) -> Result<(), Vec<Request>> {
        let Some(leader) = self.leader.borrow().clone() else {
            return Err(batch);
        };
        if self
            .unreachable
            .as_ref()
            .is_some_and(|(peer, when)| *peer == leader && when.elapsed() < RECHECK_LED)
        {
            return Err(batch);
        }
        // Which turn locks another session holds is the writing session's view: write here.
        if batch.is_empty() || batch.iter().any(|r| !r.append.watch.is_empty()) {
            return Err(batch);
        }
        for request in &mut batch {
            request.append.append_id.get_or_insert_with(Uuid::new_v4);
        }
        let wire: Vec<WireAppend> = batch
            .iter()
            .map(|r| WireAppend {
                events: r
                    .append
                    .events
                    .iter()
                    .zip(&r.append.payloads)
                    .map(|(e, p)| WireEvent::new(e, p))
                    .collect(),
                condition: r.append.condition.as_ref().map(Into::into),
                append_id: r.append.append_id.unwrap_or_default(),
            })
            .collect();
        let Ok(mut line) = serde_json::to_vec(&wire) else {
            return Err(batch);
        };
        line.push(b'\n');
        if self
            .link
            .as_ref()
            .is_none_or(|l| l.to != leader || !l.open_still())
        {
            if self.link.as_ref().is_some_and(|l| !l.open_still()) {
                // The leader may be gone: the election looks now, not at its next try.
                self.recheck.notify_one();
            }
            self.link = Link::open(&leader, self.reports.clone()).await;
            self.unreachable = self.link.is_none().then(|| (leader, Instant::now()));
        }
        let Some(link) = self.link.as_mut() else {
            self.recheck.notify_one();
            return Err(batch);
        };
        // Queued before it is written: the answer may come before the write returns.
        {
            let mut outstanding = locked(&link.sent);
            if outstanding.closed {
                // The reader ended since the look above: nobody would answer it.
                drop(outstanding);
                self.link = None;
                self.recheck.notify_one();
                return Err(batch);
            }
            outstanding.batches.push_back(Sent {
                batch,
                deadline: Instant::now() + ANSWER_WAIT,
            });
        }
        link.pushed.notify_one();
        let written = tokio::time::timeout(WRITE_WAIT, link.writer.write_all(&line)).await;
        if !matches!(written, Ok(Ok(()))) {
            // Dropped, the link gives back everything sent on it, this batch with it.
            self.link = None;
            self.recheck.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::event::Event;

    /// A leader at a free port that takes connections and answers nothing; `close_after`: it
    /// closes each connection after reading that many lines (the token's among them).
    async fn leader_answering_nothing(close_after: Option<usize>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let peer = Peer::fresh(listener.local_addr().expect("bound"));
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let Some(lines) = close_after else {
                    kept.push(stream);
                    continue;
                };
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = Vec::new();
                    for _ in 0..lines {
                        line.clear();
                        if !matches!(
                            read_line_into(&mut reader, &mut line, MAX_LINE).await,
                            Ok(true)
                        ) {
                            break;
                        }
                    }
                });
            }
        });
        peer
    }

    /// A follower of `leader`, and the requests it gives back to be written here.
    fn follower_of(leader: Peer) -> (Follower, LeaderNews, Arc<Mutex<Vec<Request>>>) {
        let (watch, news) = news();
        news.leader.send_replace(Some(leader));
        let given_back: Arc<Mutex<Vec<Request>>> = Arc::default();
        let kept = given_back.clone();
        let reports: Reports = Arc::new(move |report| {
            if let Report::Unanswered(batch) = report {
                locked(&kept).extend(batch);
            }
        });
        (Follower::new(watch, reports), news, given_back)
    }

    fn one_request() -> (Request, oneshot::Receiver<Answer>) {
        Request::for_test(Event::new("T", serde_json::json!({})), None)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_leader_closes_a_connection_on_which_nothing_comes() {
        // Nothing reaches the appender.
        let committer = super::super::group_commit::GroupCommitter::unconnected(1).await;
        let submitter = committer.submitter().clone();
        // The token, then half a batch.
        crate::lines::idle::served_until_idle(b"t0k\n[{\"events\":[", |stream| {
            serve(stream, "t0k".to_owned(), submitter)
        })
        .await;
    }

    /// A peer at a port nothing listens on any more: connecting to it is refused.
    fn gone() -> Peer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        Peer::fresh(listener.local_addr().expect("bound"))
    }

    #[tokio::test]
    async fn a_leader_that_cannot_be_reached_is_not_tried_again_at_once() {
        let (mut follower, news, _given_back) = follower_of(gone());
        // Each failed try asks the election to look again.
        let tried = |news: &LeaderNews| news.recheck.notified().now_or_never().is_some();
        let (request, _answer) = one_request();
        assert!(follower.send(vec![request]).await.is_err());
        assert!(tried(&news), "the first send tried to connect");
        let (request, _answer) = one_request();
        assert!(follower.send(vec![request]).await.is_err());
        assert!(!tried(&news), "tried again at once");
        // Another leader is tried at once.
        news.leader.send_replace(Some(gone()));
        let (request, _answer) = one_request();
        assert!(follower.send(vec![request]).await.is_err());
        assert!(tried(&news), "the new leader was not tried");
    }

    #[tokio::test]
    async fn a_link_replaced_gives_back_what_it_had_out_at_once() {
        let first = leader_answering_nothing(None).await;
        let second = leader_answering_nothing(None).await;
        let (mut follower, news, given_back) = follower_of(first);
        let (request, _answer) = one_request();
        let append_id = {
            let sent = follower.send(vec![request]).await;
            assert!(sent.is_ok(), "sent to the first leader");
            let out = locked(&follower.link.as_ref().expect("a link").sent)
                .batches
                .len();
            assert_eq!(out, 1);
            locked(&follower.link.as_ref().expect("a link").sent).batches[0].batch[0]
                .append
                .append_id
        };
        assert!(locked(&given_back).is_empty());
        news.leader.send_replace(Some(second));
        let (request, _answer) = one_request();
        assert!(
            follower.send(vec![request]).await.is_ok(),
            "sent to the second"
        );
        // Not after the first leader's deadline: when the link to it was replaced, under the
        // append id it was sent with.
        let back: Vec<Option<Uuid>> = locked(&given_back)
            .iter()
            .map(|r| r.append.append_id)
            .collect();
        assert_eq!(back, [append_id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_batch_is_left_on_a_link_nobody_reads() {
        // Each connection ends after the token and one batch: the reader ends while batches
        // are being sent.
        let leader = leader_answering_nothing(Some(2)).await;
        let (mut follower, _news, given_back) = follower_of(leader);
        let mut answers = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..2_000 {
            let (request, answer) = one_request();
            answers.push(answer);
            if let Err(batch) = follower.send(vec![request]).await {
                refused.extend(batch);
            }
        }
        drop(follower);
        // Every request is somewhere: given back to be written here, or refused (written here
        // at once). One dropped would be a caller waiting for an answer nobody gives.
        let dropped = answers
            .iter_mut()
            .map(oneshot::Receiver::try_recv)
            .filter(|a| matches!(a, Err(oneshot::error::TryRecvError::Closed)))
            .count();
        assert_eq!(dropped, 0);
        assert_eq!(locked(&given_back).len() + refused.len(), 2_000);
    }
}
