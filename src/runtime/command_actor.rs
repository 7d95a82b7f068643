//! The command actor: runs `read -> fold -> decide -> append` for the commands routed to it.
//!
//! Commands queue in the actor. Each turn takes the queued commands (up to `max_chain`) as one
//! chain: one read of the union of their queries, each decided in order on the state so far
//! (later ones see the events earlier ones decided), and one atomic conditional append of all
//! their events, conditioned on the union of their boundaries. A hot boundary thus costs one read
//! and one append per chain instead of per command. On a conflict the chain's commands back off
//! (a timer, never a sleep) and are decided again on fresh state, one at a time, so that one
//! contended boundary does not fail the others again. The actor does not wait for a chain's
//! append: it goes on with the commands that cannot see its events (`in_flight`).

use std::any::TypeId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use uuid::Uuid;

use super::after_append::{Next, after_append};
use super::in_flight::InFlight;
use super::job::{Decided, ErasedCommand, Job, JobOutcome, State};
use super::leases::{ConflictSource, Leases, TurnSession};
use super::turnstile::{Turn, Turnstile};
use super::warm_cache::WarmCache;
use super::{Committed, RetryPolicy};
use crate::append::{AppendCondition, Appended};
use crate::decision::union_all;
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent};
use crate::metrics as names;
use crate::query::Query;
use crate::store::{EventStore, ReadResult, read_complete};

/// A job's decision in a chain: its events, or its rejection (boxed, typed by the caller).
type Verdict = Result<Vec<Event>, Box<dyn std::any::Any + Send>>;

pub(crate) enum CommandMsg {
    Execute(Job),
    /// Run the next chain.
    Process,
    /// A chain's append was answered while the actor went on (see `in_flight`).
    Answered(AnsweredAppend),
}

/// A chain sent to the store without waiting, and the store's answer. Dropped unsettled (its
/// actor stopped before it, a decision of a later chain having panicked), it answers the jobs
/// itself with what the answer proves, since no actor is left to retry them.
pub(crate) struct AnsweredAppend(Option<Box<Answer>>);

struct Answer {
    chain: Resend,
    held: Held,
    answer: Result<Appended, AppendError>,
}

impl AnsweredAppend {
    fn settle(mut self) -> Answer {
        *self.0.take().expect("settled once")
    }
}

impl Drop for AnsweredAppend {
    fn drop(&mut self) {
        if let Some(orphaned) = self.0.take() {
            answer_orphaned(*orphaned);
        }
    }
}

pub(crate) struct CommandActor<S> {
    pub(crate) store: Arc<S>,
    pub(crate) policy: RetryPolicy,
    pub(crate) max_chain: usize,
    /// Turns on keys among this process's actors.
    pub(crate) turnstile: Arc<Turnstile>,
    /// Turns on keys across processes (a PostgreSQL store only).
    pub(crate) leases: Option<Arc<Leases>>,
}

/// What a chain holds while it runs.
struct Held {
    /// Every key of its commands (held in this process).
    keys: Vec<u64>,
    /// A turn across processes was needed and could not be taken.
    turn_lost: bool,
    /// Some of its keys are contended by another process, or were lately: its warm state is
    /// not trusted without a read.
    contended_across_processes: bool,
    /// This actor held every one of its keys last in this process: no other actor here
    /// appended on them since.
    held_last_here: bool,
}

/// The commands of a chain that fold the same state.
struct Group {
    kind: TypeId,
    query: Query,
    /// Any command of the group: it knows how to fold, split and join the state.
    owner: Arc<dyn ErasedCommand>,
    state: Option<State>,
    /// For each leaf projection of the state (see `Projection::parts`), the position up to
    /// which it has folded the store (`None`: nothing yet).
    seen: Vec<Option<Position>>,
    /// Its state came from the warm cache.
    warm: bool,
    /// Every leaf is current: folded up to this actor's own last append on it.
    current: bool,
}

/// A chain after deciding.
enum Chain {
    /// Decided, to be appended.
    Decided(Resend),
    /// Every command is answered: nothing to append.
    Answered,
    /// Decided on warm state without a read, some command decided nothing or was refused: that
    /// answer must stand on a read, so the chain is decided again after one.
    ReadFirst(Vec<Job>),
}

/// A projection panicked while folding the chain's shared state: every command of the chain
/// fails with it, and the actor is restarted.
fn fail(chain: Vec<Job>, message: String) -> ActorProcessingErr {
    for job in chain {
        job.answer(JobOutcome::Panicked(message.clone()));
    }
    Box::new(DecisionPanicked(message))
}

pub(crate) struct CommandState {
    queue: VecDeque<Job>,
    cache: WarmCache,
    /// A `Process` message is on its way (now or after a back-off).
    scheduled: bool,
    /// Chains whose appends failed without a known outcome (the connection dropped, say), each
    /// with when it is due: sent again, unchanged, before anything else runs, so that each is
    /// stored exactly once. (Two chains out at once can fail in one transaction.)
    resends: VecDeque<(Resend, Instant)>,
    /// The connection for turns across processes.
    turns: TurnSession,
    /// The keys of the chains whose appends are out.
    in_flight: InFlight,
    /// This actor as a holder of the turnstile's keys.
    holder: u64,
}

/// A decided chain waiting to be appended again.
struct Resend {
    decided: Vec<(Job, Verdict)>,
    events: Vec<Event>,
    condition: AppendCondition,
    /// The id the store records with the chain's events ([`EventStore::append_as`]): kept
    /// across re-sends, so that a re-send finding its events stored learns whether its own first
    /// send stored them or another execution of the same keyed commands did.
    append_id: Uuid,
    /// Sent before, with an unknown outcome.
    resent: bool,
    /// Decided on warm state without reading first: a conflict only means the state was not
    /// current, and the retry (which reads) costs no attempt.
    read_skipped: bool,
    /// Commands whose projection's state is kept current after the append: their warm state
    /// plus the chain's events is the store up to the chain's last event.
    refresh: Vec<Arc<dyn ErasedCommand>>,
}

/// Why the actor stops after a panicking decision: its restart is the supervisor's business.
#[derive(Debug, thiserror::Error)]
#[error("a decision panicked: {0}")]
pub(crate) struct DecisionPanicked(String);

impl<S: EventStore + 'static> Actor for CommandActor<S> {
    type Msg = CommandMsg;
    type State = CommandState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CommandState {
            queue: VecDeque::new(),
            scheduled: false,
            cache: WarmCache::default(),
            resends: VecDeque::new(),
            turns: TurnSession::default(),
            in_flight: InFlight::default(),
            holder: self.turnstile.holder(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CommandMsg::Execute(job) => {
                // Held back by an append out, or too few to start a chain beside it: the next
                // answer schedules the next chain.
                let ready = state.in_flight.arrived(&job);
                state.queue.push_back(job);
                if !state.scheduled && ready {
                    state.scheduled = true;
                    myself.send_message(CommandMsg::Process)?;
                }
            }
            CommandMsg::Process => {
                state.scheduled = false;
                if state.in_flight.may_start() {
                    self.run_chain(&myself, state).await?;
                    schedule(&myself, state)?;
                }
            }
            CommandMsg::Answered(answered) => {
                let Answer {
                    mut chain,
                    held,
                    answer,
                } = answered.settle();
                state.in_flight.answered(chain.append_id);
                for (job, _) in &mut chain.decided {
                    // Delivered: the answer below says whether its events may be stored.
                    job.maybe_stored = false;
                }
                self.settle(state, chain, &held, answer).await;
                // Jobs the answer unblocked may run now, whatever back-off timer is pending.
                state.scheduled = false;
                schedule(&myself, state)?;
            }
        }
        Ok(())
    }
}

/// Schedules the next chain: a pending resend first, after its own back-off; otherwise when the
/// first queued job may run (jobs back off one by one, so a job that keeps failing does not hold
/// up the others behind it), none while every append slot is taken.
fn schedule(
    myself: &ActorRef<CommandMsg>,
    state: &mut CommandState,
) -> Result<(), ActorProcessingErr> {
    if state.scheduled {
        return Ok(());
    }
    let now = Instant::now();
    let next = match state.resends.front() {
        Some((_, due)) => Some(due.saturating_duration_since(now)),
        None if !state.in_flight.may_start() => None,
        None => next_turn(&state.queue, &state.in_flight, now),
    };
    if let Some(delay) = next {
        state.scheduled = true;
        if delay.is_zero() {
            myself.send_message(CommandMsg::Process)?;
        } else {
            myself.send_after(delay, || CommandMsg::Process);
        }
    }
    Ok(())
}

fn record_attempt(name: &'static str, result: &'static str) {
    metrics::counter!(names::APPEND_ATTEMPTS_TOTAL, "decision" => name, "result" => result)
        .increment(1);
}

impl<S: EventStore + 'static> CommandActor<S> {
    /// Takes the next chain from the queue, answering expired jobs and leaving in place those
    /// still backing off: a job marked `solo` runs alone, and a chain stops before the next one
    /// and before a job an append out holds back.
    fn take_chain(&self, state: &mut CommandState) -> Vec<Job> {
        let now = Instant::now();
        state.in_flight.taking();
        let mut chain: Vec<Job> = Vec::new();
        let mut waiting: Vec<Job> = Vec::new();
        while chain.len() < self.max_chain {
            let Some(mut job) = state.queue.pop_front() else {
                break;
            };
            if job.deadline <= now {
                expire(job);
                continue;
            }
            if state.in_flight.blocks(&job) {
                // The queue keeps its order behind a job waiting for an append out.
                state.in_flight.hold_back();
                state.queue.push_front(job);
                break;
            }
            if job.not_before.is_some_and(|t| t > now) {
                waiting.push(job);
                continue;
            }
            if job.solo {
                if !chain.is_empty() {
                    state.queue.push_front(job);
                    break;
                }
                job.solo = false;
                chain.push(job);
                break;
            }
            chain.push(job);
        }
        for job in waiting.into_iter().rev() {
            state.queue.push_front(job);
        }
        chain
    }

    /// Puts jobs back at the front of the queue, in order, each to run alone next time, after
    /// `delay` if given.
    fn requeue_solo(
        state: &mut CommandState,
        jobs: impl DoubleEndedIterator<Item = Job>,
        delay: Option<Duration>,
    ) {
        let not_before = delay.map(|d| Instant::now() + d);
        for mut job in jobs.rev() {
            job.solo = true;
            job.not_before = not_before;
            state.queue.push_front(job);
        }
    }

    /// Runs one chain: the first resend when it is due (none other before it), else the next
    /// chain of the queue.
    async fn run_chain(
        &self,
        myself: &ActorRef<CommandMsg>,
        state: &mut CommandState,
    ) -> Result<(), ActorProcessingErr> {
        let resend = match state.resends.front() {
            Some((_, due)) if *due > Instant::now() => return Ok(()),
            Some(_) => state.resends.pop_front().map(|(resend, _)| resend),
            None => None,
        };
        let chain = match resend {
            Some(_) => Vec::new(),
            None => self.take_chain(state),
        };
        let commands = resend
            .iter()
            .flat_map(|r| r.decided.iter().map(|(job, _)| job));
        let mut keys: Vec<u64> = commands
            .chain(&chain)
            .flat_map(|job| job.command.keys().iter().copied())
            .collect();
        if chain.is_empty() && resend.is_none() {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        // Held from the read to the append's answer: no actor of this process, and no process
        // taking turns on a leased key, reads or appends on these keys meanwhile.
        let turn = self.turnstile.enter(&keys, state.holder).await;
        let leased = self.leases.as_ref().map(|l| (l, l.leased(&keys)));
        // A resend, or a chain holding turns across processes (the other processes wait for
        // them), is appended before the actor goes on.
        let awaited = resend.is_some()
            || leased
                .as_ref()
                .is_some_and(|(_, leased)| !leased.is_empty());
        let held = match leased {
            Some((leases, leased)) if !leased.is_empty() => {
                let taken = state.turns.take(leases, &leased).await;
                Held {
                    turn_lost: !taken,
                    contended_across_processes: true,
                    held_last_here: turn.held_last_by_this_holder,
                    keys,
                }
            }
            _ => Held {
                turn_lost: false,
                contended_across_processes: self
                    .leases
                    .as_ref()
                    .is_some_and(|l| l.seen_lately(&keys)),
                held_last_here: turn.held_last_by_this_holder,
                keys,
            },
        };
        let decided = match resend {
            Some(resend) => Ok(Some(resend)),
            None => self.decide_chain(state, chain, &held).await,
        };
        let next = match decided {
            Ok(Some(decided)) if !awaited => {
                state.in_flight.sent(
                    decided.append_id,
                    held.keys.clone(),
                    decided.decided.len(),
                    &decided.events,
                );
                self.send_append(myself, decided, held, turn);
                return Ok(());
            }
            Ok(Some(decided)) => {
                self.append(state, decided, &held).await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        state.turns.give_back().await;
        drop(turn);
        next
    }

    /// Decides a chain, on warm state and one read of what it lacks, or no read while the warm
    /// state is current; `None` when every command is answered without an append.
    async fn decide_chain(
        &self,
        state: &mut CommandState,
        mut chain: Vec<Job>,
        held: &Held,
    ) -> Result<Option<Resend>, ActorProcessingErr> {
        // Another actor of this process held a key since this one did, or another process
        // appends on them too: what they appended comes only with a read.
        let mut trust_warm = held.held_last_here && !held.contended_across_processes;
        loop {
            match self.decide(state, chain, trust_warm).await? {
                Chain::Decided(resend) => return Ok(Some(resend)),
                Chain::Answered => return Ok(None),
                Chain::ReadFirst(jobs) => {
                    chain = jobs;
                    trust_warm = false;
                }
            }
        }
    }

    /// Decides a chain; `trust_warm`: without a read if every state is warm and current.
    async fn decide(
        &self,
        state: &mut CommandState,
        chain: Vec<Job>,
        trust_warm: bool,
    ) -> Result<Chain, ActorProcessingErr> {
        // One state per distinct projection in the chain, warm from the cache if possible.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = Vec::with_capacity(chain.len());
        for job in &chain {
            let command = &job.command;
            // Same projection type and equal leaves in the same order: the same state.
            let found = groups
                .iter()
                .position(|g| g.kind == command.state_kind() && g.owner.parts() == command.parts());
            let index = match found {
                Some(index) => index,
                None => {
                    let warm = match state.cache.warm(command.as_ref()) {
                        Ok(warm) => warm,
                        Err(message) => return Err(fail(chain, message)),
                    };
                    groups.push(Group {
                        kind: command.state_kind(),
                        query: command.read_query().clone(),
                        owner: command.clone(),
                        warm: warm.state.is_some(),
                        current: warm.current,
                        state: warm.state,
                        seen: warm.seen,
                    });
                    groups.len() - 1
                }
            };
            group_of.push(index);
        }
        for group in &mut groups {
            if group.state.is_none() {
                match group.owner.initial_state() {
                    Ok(initial) => group.state = Some(initial),
                    Err(message) => return Err(fail(chain, message)),
                }
            }
        }

        // One read of the union, from the oldest head any group has seen.
        let read_query = union_all(groups.iter().map(|g| &g.query)).unwrap_or_else(Query::all);
        // A leaf that never read needs everything.
        let after = groups
            .iter()
            .flat_map(|g| g.seen.iter().copied())
            .collect::<Option<Vec<_>>>()
            .and_then(|heads| heads.into_iter().min());
        let condition: Query = union_all(chain.iter().map(|job| job.command.condition_query()))
            .unwrap_or_else(Query::all);
        // Every leaf current at one and the same head: the store holds nothing new for them
        // unless another writer appended, which the append's condition finds, as it covers every
        // state's query. (Current leaves at different heads would fail that condition on this
        // actor's own later events; a query the condition does not cover could have changed
        // unseen.)
        let skip_read = trust_warm
            && after.is_some()
            && groups.iter().all(|g| {
                g.current
                    && g.seen.iter().all(|seen| *seen == after)
                    && covers(&condition, &g.query)
            });
        let read = if skip_read {
            ReadResult {
                events: Vec::new(),
                head: after,
            }
        } else {
            match read_complete(self.store.as_ref(), &read_query, after).await {
                Ok(read) => read,
                Err(e) => {
                    names::record_store_error("read", &e);
                    if e.is_transient() {
                        self.retry_later(state, chain, &e);
                        return Ok(Chain::Answered);
                    }
                    for job in chain {
                        job.answer(JobOutcome::Failed(AppendError::Store(e.clone())));
                    }
                    return Ok(Chain::Answered);
                }
            }
        };
        // Without a read there is nothing to fold, and the cache holds these states already.
        for group in groups.iter_mut().filter(|_| !skip_read) {
            let folded = group
                .state
                .as_mut()
                .map(|s| group.owner.fold(s, &read.events, &group.seen));
            if let Some(Err(message)) = folded {
                return Err(fail(chain, message));
            }
            group.seen.fill(read.head);
            // What is committed up to the read's head is worth keeping, whatever comes next.
            if let Some(warm) = &group.state
                && let Err(message) = state
                    .cache
                    .keep(group.owner.as_ref(), warm, read.head, false)
            {
                return Err(fail(chain, message));
            }
        }

        // Decide in order; the events each decides are folded into every state they match, so
        // later commands see them.
        let mut next_position = read.head.map_or(0, Position::get) + 1;
        let now = SystemTime::now();
        let mut decided: Vec<(Job, Verdict)> = Vec::with_capacity(chain.len());
        for (job, group) in chain.into_iter().zip(group_of) {
            let current = groups[group].state.as_ref().expect("initialised above");
            match job.command.decide(current) {
                Decided::Events(events) => {
                    let provisional: Vec<SequencedEvent> = events
                        .iter()
                        .map(|event| {
                            next_position += 1;
                            SequencedEvent {
                                position: Position::new(next_position - 1),
                                recorded_at: now,
                                event: event.clone(),
                            }
                        })
                        .collect();
                    for g in &mut groups {
                        let folded = g
                            .state
                            .as_mut()
                            .map(|s| g.owner.fold(s, &provisional, &g.seen));
                        if let Some(Err(message)) = folded {
                            job.answer(JobOutcome::Panicked(message.clone()));
                            return Err(Box::new(DecisionPanicked(message)));
                        }
                    }
                    decided.push((job, Ok(events)));
                }
                Decided::Rejected(why) => decided.push((job, Err(why))),
                Decided::Panicked(message) => {
                    job.answer(JobOutcome::Panicked(message.clone()));
                    // The other jobs are dropped with this actor and re-submitted by their
                    // callers (they never ran); the supervisor starts a fresh actor.
                    return Err(Box::new(DecisionPanicked(message)));
                }
            }
        }

        let events: Vec<Event> = decided
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
        let refused = decided.iter().any(|(_, verdict)| verdict.is_err());
        if skip_read && (refused || events.is_empty()) {
            return Ok(Chain::ReadFirst(
                decided.into_iter().map(|(job, _)| job).collect(),
            ));
        }
        if events.is_empty() {
            // Nothing to append: every answer stands on the state as read.
            for (job, outcome) in decided {
                finish(job, outcome, Vec::new(), false);
            }
            return Ok(Chain::Answered);
        }
        // Kept current after the append: projections used before (a boundary met once, as most
        // are under `disjoint`, is not worth folding twice) whose every item the condition holds,
        // so that no other event matching them can precede the chain's.
        let refresh = groups
            .into_iter()
            .filter(|g| g.warm && covers(&condition, &g.query))
            .map(|g| g.owner)
            .collect();
        Ok(Chain::Decided(Resend {
            decided,
            events,
            condition: AppendCondition::new(condition, read.head),
            append_id: self
                .leases
                .as_ref()
                .map_or_else(Uuid::new_v4, |leases| leases.append_id()),
            resent: false,
            read_skipped: skip_read,
            refresh,
        }))
    }

    /// After the chain's events were stored at `first..` at `recorded_at`, by an append
    /// conditioned on nothing matching after `read_head`: the warm state of each command of
    /// `refresh` (kept at `read_head`) with those events folded in is the store up to the
    /// chain's last event, and current.
    fn refresh(
        cache: &mut WarmCache,
        refresh: &[Arc<dyn ErasedCommand>],
        events: &[Event],
        first: Position,
        recorded_at: SystemTime,
        read_head: Option<Position>,
    ) {
        if refresh.is_empty() {
            // Nothing was warm (every boundary new, as under `disjoint`): nothing to fold.
            return;
        }
        let stored: Vec<SequencedEvent> = (first.get()..)
            .zip(events)
            .map(|(position, event)| SequencedEvent {
                position: Position::new(position),
                recorded_at,
                event: event.clone(),
            })
            .collect();
        for command in refresh {
            // Not refreshed (a projection panicking now, say): the chain's events are not in
            // its leaves, which must be read again.
            if refresh_one(cache, command.as_ref(), &stored, read_head).is_none() {
                cache.distrust(command.as_ref());
            }
        }
    }

    /// Appends a decided chain and settles its answer (the actor waits for it: see `awaited`).
    async fn append(&self, state: &mut CommandState, chain: Resend, held: &Held) {
        let (events, condition) = (chain.events.clone(), chain.condition.clone());
        let answer = match &self.leases {
            Some(leases) => {
                leases
                    .append_awaited(chain.append_id, events, condition)
                    .await
            }
            None => {
                self.store
                    .append_as(chain.append_id, events, Some(condition))
                    .await
            }
        };
        self.settle(state, chain, held, answer).await;
    }

    /// Sends a decided chain's append without waiting for it: its answer comes back as
    /// [`CommandMsg::Answered`]. The chain's keys in the turnstile pass on at the answer.
    fn send_append(
        &self,
        myself: &ActorRef<CommandMsg>,
        mut chain: Resend,
        held: Held,
        turn: Turn,
    ) {
        for (job, _) in &mut chain.decided {
            // Should the answer never reach the actor, its callers must not take the commands
            // for never run.
            job.maybe_stored = true;
        }
        let store = self.store.clone();
        // Decided on warm state without a read, chain after chain, a process may keep winning
        // a boundary on which others take turns without ever meeting them: it watches their
        // turns (cold chains read, which leaves the others room; and watching costs a lock
        // probe per key).
        let leases = self.leases.clone().filter(|_| chain.read_skipped);
        let myself = myself.clone();
        tokio::spawn(async move {
            let events = chain.events.clone();
            let condition = chain.condition.clone();
            let answer = match leases {
                Some(leases) => {
                    leases
                        .append_watching(chain.append_id, events, condition, &held.keys)
                        .await
                }
                None => {
                    store
                        .append_as(chain.append_id, events, Some(condition))
                        .await
                }
            };
            // This actor's own next chains on these keys wait for the message; other actors
            // need not.
            drop(turn);
            let answered = AnsweredAppend(Some(Box::new(Answer {
                chain,
                held,
                answer,
            })));
            // The actor stopped: the message, dropped, answers the jobs.
            let _ = myself.send_message(CommandMsg::Answered(answered));
        });
    }

    /// Answers a chain's jobs after its append, or puts them back to run again (in the queue, or
    /// as a resend of the same append when its outcome was unknown).
    async fn settle(
        &self,
        state: &mut CommandState,
        chain: Resend,
        held: &Held,
        answer: Result<Appended, AppendError>,
    ) {
        let Resend {
            decided,
            events,
            condition,
            append_id,
            resent,
            read_skipped,
            refresh,
        } = chain;
        if let Err(AppendError::Store(e)) = &answer {
            names::record_store_error("append", e);
        }
        match after_append(answer, decided.len(), condition.after, resent) {
            Next::Answer {
                first,
                replayed,
                recorded_at,
            } => {
                match recorded_at {
                    Some(recorded_at) => Self::refresh(
                        &mut state.cache,
                        &refresh,
                        &events,
                        first,
                        recorded_at,
                        condition.after,
                    ),
                    // Stored by an earlier send or another execution: when is not known here.
                    None => {
                        for (job, _) in &decided {
                            state.cache.distrust(job.command.as_ref());
                        }
                    }
                }
                finish_stored(decided, first, replayed);
            }
            Next::DecideSingly => {
                Self::requeue_solo(state, decided.into_iter().map(|(job, _)| job), None);
            }
            Next::Conflict => {
                // The append is answered: other processes need not wait on this chain's turns
                // while it looks up who was in its way.
                state.turns.give_back().await;
                for (job, _) in &decided {
                    state.cache.distrust(job.command.as_ref());
                }
                let source = match &self.leases {
                    Some(leases) => leases.classify(&condition, &held.keys).await,
                    None => ConflictSource::SameProcess,
                };
                // Per command, as `dcb_append_attempts_total{result="conflict"}` counts them.
                metrics::counter!(names::APPEND_CONFLICTS_TOTAL, "source" => source.label())
                    .increment(decided.len() as u64);
                // Another runtime's append: while this chain had no turn on some of its keys
                // (they are leased now), or while that runtime appends without turns (it has not
                // met this one on them yet, or its lease lapsed; its own next conflict leases
                // them), the retry waits for its turn instead of backing off, and costs no
                // attempt. When turns could not be taken, it does.
                let waits_for_turn = source == ConflictSource::OtherRuntime && !held.turn_lost;
                // Decided without a read: the retry reads what the state lacked, at once.
                self.back_off(state, decided, waits_for_turn || read_skipped);
            }
            Next::RetryLater(e) => {
                let jobs = decided.into_iter().map(|(job, _)| job).collect();
                self.retry_later(state, jobs, &e);
            }
            Next::Resend(e) => {
                let now = Instant::now();
                let mut live = decided;
                let mut failures = 0;
                for (job, _) in &mut live {
                    job.maybe_stored = true;
                    failures = failures.max(job.failed(&e));
                }
                if live.iter().all(|(job, _)| job.deadline <= now) {
                    // Out of time: each caller learns the failure (the events may be stored;
                    // an idempotency key finds out).
                    for (job, _) in live {
                        expire(job);
                    }
                    return;
                }
                let resend = Resend {
                    decided: live,
                    events,
                    condition,
                    append_id,
                    resent: true,
                    read_skipped,
                    refresh,
                };
                let due = Instant::now() + self.transient_delay(failures);
                state.resends.push_back((resend, due));
            }
            Next::GiveUp => {
                for (job, _) in decided {
                    expire(job);
                }
            }
            Next::Fail(e) => {
                for (job, _) in decided {
                    record_attempt(job.command.name(), "error");
                    job.answer(JobOutcome::Failed(e.clone()));
                }
            }
        }
    }

    /// After a transient failure that certainly stored nothing (a read, or an append rolled
    /// back): the chain goes back to the front of the queue, to be decided again after a
    /// back-off (jobs out of time answer the failure at the next turn).
    fn retry_later(&self, state: &mut CommandState, mut chain: Vec<Job>, error: &StoreError) {
        let failures = chain
            .iter_mut()
            .map(|job| job.failed(error))
            .max()
            .unwrap_or(0);
        // One command at a time: if the union read (or the chain's append) was too big for a
        // statement timeout, the same chain (or a longer one) would fail again and again.
        let delay = self.transient_delay(failures);
        Self::requeue_solo(state, chain.into_iter(), Some(delay));
    }

    /// Back-off after transient failures: the conflict back-off's curve up to ten times its cap
    /// (retrying faster would only add load to a database that is failing under it), and only
    /// the deadline bounds how long it goes on (a restarting server takes seconds).
    fn transient_delay(&self, failures: u32) -> Duration {
        let delay = self.policy.fault_delay(failures);
        metrics::histogram!(names::BACKOFF_SECONDS).record(delay);
        delay
    }

    /// Counts the conflict, gives up on jobs out of attempts, and puts the rest back at the
    /// front of the queue to run again after a jittered exponential delay; with `free`, to run
    /// again at once, costing no attempt (up to `max_attempts` such retries per job).
    fn back_off(&self, state: &mut CommandState, decided: Vec<(Job, Verdict)>, free: bool) {
        let mut retry = Vec::new();
        let mut turn = Vec::new();
        let mut attempt = 0;
        for (mut job, _) in decided {
            let name = job.command.name();
            record_attempt(name, "conflict");
            if free && job.free_retries < self.policy.max_attempts {
                job.free_retries += 1;
                metrics::counter!(names::COMMAND_RETRIES_TOTAL, "decision" => name).increment(1);
                turn.push(job);
                continue;
            }
            job.attempts += 1;
            if job.attempts >= self.policy.max_attempts {
                let attempts = job.attempts + job.free_retries;
                job.answer(JobOutcome::ConflictsExhausted { attempts });
            } else {
                metrics::counter!(names::COMMAND_RETRIES_TOTAL, "decision" => name).increment(1);
                attempt = attempt.max(job.attempts);
                retry.push(job);
            }
        }
        // Decided again together, at once: the next chain takes its turn first.
        for job in turn.into_iter().rev() {
            state.queue.push_front(job);
        }
        if retry.is_empty() {
            return;
        }
        // The chain's condition was the union of all its boundaries: retried together, one
        // command's contended boundary would fail the others again (chains only grow while
        // they wait). Retry them one at a time, each conditioned on its own boundary only.
        let delay = self.policy.delay(attempt);
        metrics::histogram!(names::BACKOFF_SECONDS).record(delay);
        Self::requeue_solo(state, retry.into_iter(), Some(delay));
    }
}

/// Answers the jobs of an append whose actor stopped before settling it.
fn answer_orphaned(orphaned: Answer) {
    let Answer { chain, answer, .. } = orphaned;
    match after_append(
        answer,
        chain.decided.len(),
        chain.condition.after,
        chain.resent,
    ) {
        Next::Answer {
            first, replayed, ..
        } => {
            finish_stored(chain.decided, first, replayed);
        }
        // Nothing of theirs stored: dropped unanswered, the jobs tell their callers they never
        // ran.
        Next::Conflict | Next::DecideSingly | Next::RetryLater(_) => {
            for (mut job, _) in chain.decided {
                job.maybe_stored = false;
                drop(job);
            }
        }
        Next::Fail(e) => {
            for (job, _) in chain.decided {
                job.answer(JobOutcome::Failed(e.clone()));
            }
        }
        // Stored or not is unknown: dropped, each job answers so (`maybe_stored`).
        Next::Resend(e) => {
            for (mut job, _) in chain.decided {
                job.failed(&e);
                drop(job);
            }
        }
        Next::GiveUp => {}
    }
}

/// When the next turn should run: now if a queued job may run, else when the first one backing
/// off may; `None` with an empty queue, or with only jobs waiting for appends still out.
fn next_turn(queue: &VecDeque<Job>, in_flight: &InFlight, now: Instant) -> Option<Duration> {
    queue
        .iter()
        .filter(|job| !in_flight.blocks(job))
        .map(|job| {
            // A job past its deadline is answered at the next turn, backing off or not.
            job.not_before.map_or(Duration::ZERO, |t| {
                t.min(job.deadline).saturating_duration_since(now)
            })
        })
        .min()
}

/// A job past its deadline: `Timeout`, or the transient store failure that kept it from
/// completing (then, if it was an append, its events may be stored).
fn expire(mut job: Job) {
    match job.last_failure.take() {
        Some(e) => job.answer(JobOutcome::Failed(AppendError::Store(e))),
        None => job.answer(JobOutcome::Timeout),
    }
}

/// Answers the jobs of a chain whose events are stored from `first` on, in order.
fn finish_stored(decided: Vec<(Job, Verdict)>, first: Position, replayed: bool) {
    let mut next = first.get();
    for (job, outcome) in decided {
        let count = i64::try_from(outcome.as_ref().map_or(0, Vec::len)).unwrap_or(0);
        let positions = (next..next + count).map(Position::new).collect();
        next += count;
        finish(job, outcome, positions, replayed);
    }
}

fn finish(job: Job, outcome: Verdict, positions: Vec<Position>, replayed: bool) {
    match outcome {
        Ok(events) => {
            if !events.is_empty() {
                record_attempt(job.command.name(), "committed");
            }
            // Every append it took, the conflicts that cost no attempt included.
            let attempts = if replayed {
                0
            } else {
                job.attempts + job.free_retries + 1
            };
            job.answer(JobOutcome::Committed(Committed {
                positions,
                events,
                attempts,
                replayed,
            }));
        }
        Err(why) => job.answer(JobOutcome::Rejected(why)),
    }
}

/// Whether every event matching `query` also matches `condition`: each of its items is one of
/// the condition's (a union keeps its operands' items as they are).
fn covers(condition: &Query, query: &Query) -> bool {
    condition.is_all()
        || (!query.is_all()
            && query
                .items()
                .iter()
                .all(|item| condition.items().contains(item)))
}

/// Folds the `stored` events (all after `read_head`) into `command`'s warm state and keeps it
/// current at the last of them; `None` if that cannot be done.
fn refresh_one(
    cache: &mut WarmCache,
    command: &dyn ErasedCommand,
    stored: &[SequencedEvent],
    read_head: Option<Position>,
) -> Option<()> {
    let last = stored.last()?.position;
    let warm = cache.warm(command).ok()?;
    // Each leaf is as the read left it, or refreshed already by another command of the chain
    // sharing it (then it folds nothing more).
    if warm
        .seen
        .iter()
        .any(|seen| *seen != read_head && *seen != Some(last))
    {
        return None;
    }
    let mut folded = warm.state?;
    command.fold(&mut folded, stored, &warm.seen).ok()?;
    cache.keep(command, &folded, Some(last), true).ok()
}
