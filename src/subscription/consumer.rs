//! The consumer actor of one subscription in one process: takes the subscription's lock (or
//! stands by), then delivers batch after batch from its checkpoint, and waits for a notification
//! or its poll interval when caught up. Each step ends by arranging exactly one next step (now,
//! after a delay, or on a wake-up), so steps never pile up.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checkpoint;
use super::delivery::{Delivery, Undelivered};
use super::ownership::Session;
use super::{Progress, Subscription, SubscriptionError, SubscriptionState};
use crate::event::{Position, SequencedEvent};
use crate::metrics as names;
use crate::store::{EventStore, PostgresStore, ReadOptions};

/// What the consumer's steps share, and what its handle watches.
pub(crate) struct Shared {
    pub(crate) subscription: Subscription,
    /// The subscription's row id, its lock key.
    pub(crate) id: i32,
    /// The database's clock when this run began: a failure recorded after it stops this run too.
    pub(crate) started_at: SystemTime,
    pub(crate) store: PostgresStore,
    pub(crate) progress: watch::Sender<Progress>,
}

pub(crate) struct Consumer<D> {
    shared: Arc<Shared>,
    delivery: std::marker::PhantomData<fn() -> D>,
}

impl<D> Consumer<D> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            delivery: std::marker::PhantomData,
        }
    }
}

pub(crate) enum ConsumerMsg {
    /// Take the next step.
    Step,
}

pub(crate) struct ConsumerState<D> {
    delivery: D,
    session: Option<Session>,
    holds_lock: bool,
    /// Read the checkpoint from its row before the next batch (after taking the lock, and after
    /// a delivery whose outcome is unknown).
    reload: bool,
    /// The checkpoint as stored (the last position handled), as this consumer knows it.
    position: i64,
    /// How far this consumer has read: at least `position`. Ahead of it when only events the
    /// query does not match came since, whose checkpoint is written at most once per poll
    /// interval (not on every append).
    scanned: i64,
    /// When the checkpoint was last written.
    written: std::time::Instant,
    /// Deliver one event at a time up to here: a batch failed, and the failing event must be
    /// found, with every event before it applied.
    isolate_until: Option<i64>,
    /// Consecutive handler failures on the current event.
    failures: u32,
    /// Consecutive database failures.
    faults: u32,
    wake: watch::Receiver<u64>,
    waiter: Option<JoinHandle<()>>,
    stopped: bool,
}

/// What to do after a step.
enum Next {
    Now,
    After(Duration),
    /// When a notification comes, or after the poll interval.
    OnWake,
    Stop(SubscriptionError),
}

impl<D: Delivery> Actor for Consumer<D> {
    type Msg = ConsumerMsg;
    type State = ConsumerState<D>;
    type Arguments = D;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        delivery: D,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = self.name().to_owned();
        // The series exist from the start: "0 errors", not "no data".
        metrics::counter!(names::SUBSCRIPTION_EVENTS_TOTAL, "subscription" => name.clone())
            .increment(0);
        for kind in ["handler", "store"] {
            metrics::counter!(
                names::SUBSCRIPTION_ERRORS_TOTAL,
                "subscription" => name.clone(),
                "kind" => kind
            )
            .increment(0);
        }
        // Registered without a value change: another consumer of the name in this process may be
        // the active one.
        metrics::gauge!(names::SUBSCRIPTION_ACTIVE, "subscription" => name).increment(0.0);
        myself.cast(ConsumerMsg::Step)?;
        Ok(ConsumerState {
            delivery,
            session: None,
            holds_lock: false,
            reload: true,
            position: self.shared.progress.borrow().position.get(),
            scanned: self.shared.progress.borrow().position.get(),
            written: std::time::Instant::now(),
            isolate_until: None,
            failures: 0,
            faults: 0,
            wake: self.shared.store.wakeups().subscribe(),
            waiter: None,
            stopped: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        ConsumerMsg::Step: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match self.step(state).await {
            Next::Now => myself.cast(ConsumerMsg::Step)?,
            Next::After(delay) => {
                state.waiter = Some(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = myself.cast(ConsumerMsg::Step);
                }));
            }
            Next::OnWake => {
                let mut wake = state.wake.clone();
                let poll = self.shared.subscription.poll_interval;
                state.waiter = Some(tokio::spawn(async move {
                    let _ = tokio::time::timeout(poll, wake.changed()).await;
                    let _ = myself.cast(ConsumerMsg::Step);
                }));
            }
            Next::Stop(error) => {
                tracing::error!(%error, "subscription stopped");
                state.stopped = true;
                self.publish(SubscriptionState::Stopped(error), state.scanned);
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(waiter) = state.waiter.take() {
            waiter.abort();
        }
        if let Some(session) = state.session.take() {
            session.release(self.shared.id).await;
        }
        if state.holds_lock {
            self.set_active(false);
        }
        if !state.stopped {
            self.publish(SubscriptionState::ShutDown, state.scanned);
        }
        Ok(())
    }
}

impl<D: Delivery> Consumer<D> {
    fn name(&self) -> &str {
        &self.shared.subscription.name
    }

    fn publish(&self, state: SubscriptionState, position: i64) {
        self.shared.progress.send_modify(|p| {
            p.state = state;
            p.position = Position::new(position);
        });
    }

    fn set_active(&self, active: bool) {
        metrics::gauge!(names::SUBSCRIPTION_ACTIVE, "subscription" => self.name().to_owned())
            .set(if active { 1.0 } else { 0.0 });
    }

    fn count_error(&self, kind: &'static str) {
        metrics::counter!(
            names::SUBSCRIPTION_ERRORS_TOTAL,
            "subscription" => self.name().to_owned(),
            "kind" => kind
        )
        .increment(1);
    }

    /// Back-off after a database failure: 50 ms doubling to 5 s, with full jitter.
    fn fault_delay(state: &mut ConsumerState<D>) -> Duration {
        state.faults = state.faults.saturating_add(1);
        let exp = Duration::from_millis(50).saturating_mul(1u32 << (state.faults - 1).min(7));
        exp.min(Duration::from_secs(5)).mul_f64(fastrand::f64())
    }

    /// Gives up the lock (it may already be gone with its session) and stands by.
    fn stand_by(&self, state: &mut ConsumerState<D>) {
        if state.holds_lock {
            tracing::info!(
                subscription = self.name(),
                "standing by: another consumer is active"
            );
        }
        if state.holds_lock {
            self.set_active(false);
        }
        state.session = None;
        state.holds_lock = false;
        self.publish(SubscriptionState::Standby, state.scanned);
    }

    /// Holds the lock after this, or says when to try again.
    async fn own(&self, state: &mut ConsumerState<D>) -> Result<(), Next> {
        let takeover = self.shared.subscription.takeover_interval;
        if !state.session.as_ref().is_some_and(Session::is_alive) {
            if state.session.is_some() {
                self.stand_by(state);
            }
            match Session::open(self.shared.store.config()).await {
                Ok(session) => state.session = Some(session),
                Err(e) => {
                    tracing::debug!(error = %e, "no session for a subscription");
                    self.count_error("store");
                    return Err(Next::After(takeover));
                }
            }
        }
        if state.holds_lock {
            return Ok(());
        }
        let session = state.session.as_ref().expect("opened above");
        match session.try_lock(self.shared.id).await {
            Ok(true) => {
                state.holds_lock = true;
                state.reload = true;
                tracing::info!(subscription = self.name(), "active");
                Ok(())
            }
            Ok(false) => {
                self.publish(SubscriptionState::Standby, state.scanned);
                Err(Next::After(takeover))
            }
            Err(_) => {
                state.session = None;
                self.count_error("store");
                Err(Next::After(takeover))
            }
        }
    }

    async fn step(&self, state: &mut ConsumerState<D>) -> Next {
        if let Err(next) = self.own(state).await {
            return next;
        }
        let store = &self.shared.store;
        if state.reload {
            let loaded = match store.pool().get().await {
                Ok(client) => checkpoint::load(&**client, self.name()).await,
                Err(e) => Err(e.into()),
            };
            match loaded {
                Ok(Some(row)) => {
                    // Another consumer of the name stopped on an event after this run began:
                    // the subscription has stopped, here too (a new run, after a fix, retries).
                    if let (Some(event), Some((error, at))) = (row.failed_position, &row.failure)
                        && event > row.position
                        && *at > self.shared.started_at
                    {
                        state.position = row.position;
                        state.scanned = row.position;
                        return Next::Stop(SubscriptionError::HandlerFailed {
                            name: self.name().to_owned(),
                            event: Position::new(event),
                            checkpoint: Position::new(row.position),
                            attempts: 0,
                            error: error.clone(),
                        });
                    }
                    state.position = row.position;
                    state.scanned = row.position;
                    state.reload = false;
                    #[allow(clippy::cast_precision_loss)] // positions far below 2^52
                    metrics::gauge!(names::SUBSCRIPTION_POSITION, "subscription" => self.name().to_owned())
                        .set(row.position as f64);
                }
                Ok(None) => {
                    // The row was removed by hand: make it again where this consumer was.
                    let recreated = match store.pool().get().await {
                        Ok(client) => {
                            checkpoint::ensure(
                                &**client,
                                self.name(),
                                super::Start::After(Position::new(state.position)),
                            )
                            .await
                        }
                        Err(e) => Err(e.into()),
                    };
                    if recreated.is_err() {
                        self.count_error("store");
                    }
                    return Next::After(Self::fault_delay(state));
                }
                Err(_) => {
                    self.count_error("store");
                    return Next::After(Self::fault_delay(state));
                }
            }
            self.set_active(true);
            self.publish(SubscriptionState::Active, state.scanned);
        }

        // Whatever is appended from here on wakes the wait after this step.
        state.wake.borrow_and_update();
        let subscription = &self.shared.subscription;
        let limit = if state.isolate_until.is_some() {
            1
        } else {
            subscription.batch_size
        };
        let read = store
            .read(
                &subscription.query,
                ReadOptions::default()
                    .after(Position::new(state.scanned))
                    .limit(limit),
            )
            .await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                crate::metrics::record_store_error("read", &e);
                self.count_error("store");
                return Next::After(Self::fault_delay(state));
            }
        };
        let head = read.head.map_or(0, Position::get);
        let full = read.events.len() == limit;
        let to = match read.events.last() {
            // A full page is complete only up to its last event.
            Some(last) if full => last.position.get(),
            _ => head.max(state.scanned),
        };
        let lag_events = |position: i64| {
            #[allow(clippy::cast_precision_loss)] // positions far below 2^52
            let lag = (head - position).max(0) as f64;
            metrics::gauge!(names::SUBSCRIPTION_LAG_EVENTS, "subscription" => self.name().to_owned())
                .set(lag);
        };
        if read.events.is_empty() {
            // Nothing to hand over; the checkpoint moves past what was read at most once per poll
            // interval.
            state.scanned = to;
            lag_events(to);
            metrics::gauge!(names::SUBSCRIPTION_LAG_SECONDS, "subscription" => self.name().to_owned())
                .set(0.0);
            let due = to > state.position && state.written.elapsed() >= subscription.poll_interval;
            if !due {
                self.publish(SubscriptionState::Active, to);
                return Next::OnWake;
            }
        }
        let delivered = state
            .delivery
            .deliver(store.pool(), self.name(), &read.events, state.position, to)
            .await;
        match delivered {
            Ok(at) => {
                state.position = to;
                state.scanned = to;
                state.written = std::time::Instant::now();
                state.failures = 0;
                state.faults = 0;
                if state.isolate_until.is_some_and(|until| to >= until) {
                    state.isolate_until = None;
                }
                self.record_batch(&read.events, to, at);
                lag_events(to);
                self.publish(SubscriptionState::Active, to);
                if full { Next::Now } else { Next::OnWake }
            }
            Err(Undelivered::Overtaken) => {
                self.stand_by(state);
                Next::After(subscription.takeover_interval)
            }
            Err(Undelivered::Store(e)) => {
                tracing::debug!(subscription = self.name(), error = %e, "delivery failed");
                self.count_error("store");
                // A commit whose answer was lost may have moved the checkpoint.
                state.reload = true;
                Next::After(Self::fault_delay(state))
            }
            Err(Undelivered::Handler(error)) => {
                self.count_error("handler");
                let Some(first) = read.events.first() else {
                    return Next::After(Self::fault_delay(state));
                };
                // A handler failing because another consumer (one that lost its lock without
                // knowing yet) handled these events first is not this event's failure: read the
                // checkpoint again and go on from there.
                match self.stored_position().await {
                    Some(stored) if stored != state.position => {
                        tracing::info!(
                            subscription = self.name(),
                            stored,
                            "the checkpoint moved under a failing batch; resuming from it"
                        );
                        state.reload = true;
                        return Next::Now;
                    }
                    Some(_) => {}
                    None => {
                        state.reload = true;
                        return Next::After(Self::fault_delay(state));
                    }
                }
                if read.events.len() > 1 {
                    // Find the failing event: one at a time, applying each one before it.
                    state.isolate_until = read.events.last().map(|e| e.position.get());
                    return Next::Now;
                }
                state.failures += 1;
                let retry = subscription.retry;
                if state.failures < retry.max_attempts {
                    tracing::warn!(subscription = self.name(), event = %first.position,
                        attempt = state.failures, %error, "handler failed; retrying");
                    return Next::After(retry.delay(state.failures));
                }
                if let Ok(client) = store.pool().get().await {
                    let _ = checkpoint::record_failure(
                        &**client,
                        self.name(),
                        state.position,
                        first.position,
                        &error,
                    )
                    .await;
                }
                Next::Stop(SubscriptionError::HandlerFailed {
                    name: self.name().to_owned(),
                    event: first.position,
                    checkpoint: Position::new(state.position),
                    attempts: state.failures,
                    error,
                })
            }
        }
    }

    /// The checkpoint as stored now (`None` if it cannot be read).
    async fn stored_position(&self) -> Option<i64> {
        let client = self.shared.store.pool().get().await.ok()?;
        let row = checkpoint::load(&**client, self.name()).await.ok()??;
        Some(row.position)
    }

    fn record_batch(&self, events: &[SequencedEvent], to: i64, at: SystemTime) {
        let name = self.name().to_owned();
        metrics::counter!(names::SUBSCRIPTION_EVENTS_TOTAL, "subscription" => name.clone())
            .increment(events.len() as u64);
        #[allow(clippy::cast_precision_loss)] // positions far below 2^52
        metrics::gauge!(names::SUBSCRIPTION_POSITION, "subscription" => name.clone())
            .set(to as f64);
        if let Some(last) = events.last() {
            let lag = at.duration_since(last.recorded_at).unwrap_or_default();
            metrics::gauge!(names::SUBSCRIPTION_LAG_SECONDS, "subscription" => name)
                .set(lag.as_secs_f64());
        }
    }
}
