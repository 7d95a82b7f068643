//! Subscriptions: the read side. A named subscriber receives the events matching its query in
//! position order, in batches, first catching up in pages and then following live; its checkpoint
//! (the last position handled) lives in the table `dcb_subscriptions` (migration V4).
//!
//! Positions are assigned in commit order under one lock, so a subscriber never needs gap
//! detection and never skips an event that committed late: having seen position P it has seen
//! everything at or below P.
//!
//! - [`Subscription::run_transactional`]: the handler writes in the transaction in which the
//!   checkpoint advances (exactly once).
//! - [`Subscription::run_at_least_once`]: the checkpoint advances after the handler succeeds.
//! - One consumer per name is active across processes (a session advisory lock); the others
//!   stand by and take over within a takeover interval when it dies.
//! - A handler that keeps failing stops the subscription with a [`SubscriptionError`], its
//!   checkpoint just before the failing event; [`skip_failed_event`] is the operator's explicit
//!   way past a poison event.
//! - [`View`]: a [`crate::Projection`] kept live in memory.

mod checkpoint;
mod consumer;
mod delivery;
mod ownership;
mod view;
mod wakeup;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::Position;
use crate::query::Query;
use crate::store::PostgresStore;
pub use checkpoint::Start;
use consumer::{Consumer, ConsumerMsg, Shared};
use delivery::{AfterHandling, Delivery, InTransaction};
pub use delivery::{Handler, HandlerError, TransactionalHandler};
pub use view::{View, ViewStopped};
pub(crate) use wakeup::Wakeups;

/// Longest subscription name accepted.
const MAX_NAME_BYTES: usize = 200;

/// A subscription's settings; run it with [`Subscription::run_transactional`] or
/// [`Subscription::run_at_least_once`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Subscription {
    name: String,
    query: Query,
    start: Start,
    batch_size: usize,
    poll_interval: Duration,
    takeover_interval: Duration,
    retry: HandlerRetry,
}

/// How a failing handler is retried before the subscription stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerRetry {
    /// Tries of one event before the subscription stops (default 5).
    pub max_attempts: u32,
    /// Upper bound of the first back-off (default 10 ms); it doubles with each failure.
    pub base_delay: Duration,
    /// Largest back-off (default 1 s).
    pub max_delay: Duration,
}

impl Default for HandlerRetry {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl HandlerRetry {
    /// Full jitter: uniform in `[0, min(max_delay, base_delay * 2^(failures-1))]`.
    fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        exp.min(self.max_delay).mul_f64(fastrand::f64())
    }
}

impl Subscription {
    /// A subscription named `name` (its identity across restarts and processes) to the events
    /// matching `query` ([`Query::all`] for every event).
    pub fn new(name: impl Into<String>, query: Query) -> Self {
        Self {
            name: name.into(),
            query,
            start: Start::Beginning,
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            takeover_interval: Duration::from_millis(250),
            retry: HandlerRetry::default(),
        }
    }

    /// Where to begin the first time this name runs (default [`Start::Beginning`]); ignored
    /// once the subscription has a checkpoint.
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Most events per batch (default 500; at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// How often to look for new events when no notification came (default 500 ms): the most a
    /// lost notification delays a batch.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a standby tries to take over (default 250 ms): with the time the server takes to
    /// see the active consumer's session end (at once for a process that died; up to about 8 s,
    /// by TCP keepalives, for a host that vanished), the bound on a takeover.
    pub fn takeover_interval(mut self, interval: Duration) -> Self {
        self.takeover_interval = interval;
        self
    }

    /// How a failing handler is retried (default [`HandlerRetry::default`]).
    pub fn retry(mut self, max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        self.retry = HandlerRetry {
            max_attempts,
            base_delay,
            max_delay,
        };
        self
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the subscription with a handler that writes in the checkpoint's transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Setting`] or [`StoreError::Invalid`] for bad settings; a database error.
    pub async fn run_transactional<H: TransactionalHandler>(
        self,
        store: &PostgresStore,
        handler: H,
    ) -> Result<SubscriptionHandle, StoreError> {
        self.run(store, InTransaction(handler)).await
    }

    /// Runs the subscription with a handler whose effects are outside the database.
    ///
    /// # Errors
    ///
    /// As [`Subscription::run_transactional`].
    pub async fn run_at_least_once<H: Handler>(
        self,
        store: &PostgresStore,
        handler: H,
    ) -> Result<SubscriptionHandle, StoreError> {
        self.run(store, AfterHandling(handler)).await
    }

    fn check(&self, store: &PostgresStore) -> Result<(), StoreError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return Err(StoreError::Setting {
                name: "subscription name",
                value: format!("{:?}", self.name),
                requirement: "1 to 200 bytes",
            });
        }
        StoreError::at_least_one("batch_size", self.batch_size)?;
        StoreError::at_least_one("max_attempts", self.retry.max_attempts)?;
        for (name, interval) in [
            ("poll_interval", self.poll_interval),
            ("takeover_interval", self.takeover_interval),
        ] {
            if interval.is_zero() {
                return Err(StoreError::Setting {
                    name,
                    value: format!("{interval:?}"),
                    requirement: "more than zero",
                });
            }
        }
        crate::query::validate_read(&self.query, store.limits())?;
        Ok(())
    }

    async fn run<D: Delivery>(
        self,
        store: &PostgresStore,
        delivery: D,
    ) -> Result<SubscriptionHandle, StoreError> {
        self.check(store)?;
        crate::metrics::describe();
        let row = {
            let client = store.pool().get().await?;
            checkpoint::ensure(&**client, &self.name, self.start).await?
        };
        let (progress, watched) = watch::channel(Progress {
            state: SubscriptionState::Standby,
            position: Position::new(row.position),
        });
        let shared = Arc::new(Shared {
            subscription: self,
            id: row.id,
            started_at: row.read_at,
            store: store.clone(),
            progress,
        });
        let (actor, _) = Actor::spawn(None, Consumer::new(shared.clone()), delivery)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not start a subscription");
                StoreError::Closed
            })?;
        Ok(SubscriptionHandle {
            name: shared.subscription.name.clone(),
            progress: watched,
            actor,
        })
    }
}

/// Whether this process's consumer of a subscription is working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Another consumer holds the subscription (or none could be reached yet): waiting to take over.
    Standby,
    /// This consumer holds the subscription and delivers.
    Active,
    /// Stopped on a failing handler; see [`SubscriptionHandle::shutdown`] and
    /// [`skip_failed_event`].
    Stopped(SubscriptionError),
    /// Shut down by its handle.
    ShutDown,
}

/// A subscription's state and checkpoint, as its consumer last knew them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What the consumer is doing.
    pub state: SubscriptionState,
    /// The last position handled (0: none), as last read or advanced by this consumer.
    pub position: Position,
}

/// Why a subscription stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The handler failed on one event every time it was tried; nothing at or after it was
    /// applied, and the checkpoint stands just before it.
    #[error(
        "subscription {name:?} stopped: its handler failed {attempts} time(s) on the event at {event} (checkpoint {checkpoint}): {error}"
    )]
    HandlerFailed {
        /// The subscription.
        name: String,
        /// The failing event's position.
        event: Position,
        /// The checkpoint: the last position handled.
        checkpoint: Position,
        /// Tries made by this consumer: 0 when another consumer of the name (in another process,
        /// say) stopped on the event after this one started, and this one stopped on taking over.
        attempts: u32,
        /// The handler's last error.
        error: String,
    },
    /// The subscription was shut down before what was waited for happened.
    #[error("subscription {name:?} was shut down")]
    ShutDown {
        /// The subscription.
        name: String,
    },
}

/// A running subscription of this process.
#[derive(Debug)]
pub struct SubscriptionHandle {
    name: String,
    progress: watch::Receiver<Progress>,
    actor: ActorRef<ConsumerMsg>,
}

impl SubscriptionHandle {
    /// The state and checkpoint now.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver of every change of progress.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the progress satisfies `done`; fails if the subscription stops first.
    async fn wait_until(
        &self,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<Progress, SubscriptionError> {
        let mut progress = self.progress.clone();
        let seen = progress
            .wait_for(|p| {
                done(p)
                    || matches!(
                        p.state,
                        SubscriptionState::Stopped(_) | SubscriptionState::ShutDown
                    )
            })
            .await
            .map(|p| p.clone())
            .map_err(|_| SubscriptionError::ShutDown {
                name: self.name.clone(),
            })?;
        if done(&seen) {
            return Ok(seen);
        }
        match seen.state {
            SubscriptionState::Stopped(e) => Err(e),
            _ => Err(SubscriptionError::ShutDown {
                name: self.name.clone(),
            }),
        }
    }

    /// Waits until this consumer is the active one.
    ///
    /// # Errors
    ///
    /// The subscription stopped or was shut down first.
    pub async fn active(&self) -> Result<(), SubscriptionError> {
        self.wait_until(|p| p.state == SubscriptionState::Active)
            .await
            .map(drop)
    }

    /// Waits until this consumer has handled everything up to `position` (events after the
    /// checkpoint that do not match the query count as handled once the consumer has read past
    /// them).
    ///
    /// # Errors
    ///
    /// The subscription stopped or was shut down first.
    pub async fn caught_up_to(&self, position: Position) -> Result<(), SubscriptionError> {
        self.wait_until(|p| p.position >= position).await.map(drop)
    }

    /// Waits until the subscription stops on a failing handler (or is shut down), and says why.
    pub async fn stopped(&self) -> SubscriptionError {
        match self.wait_until(|_| false).await {
            Err(e) => e,
            Ok(_) => unreachable!("`done` never holds"),
        }
    }

    /// Stops the consumer and gives its lock back (a standby elsewhere takes over); a batch in
    /// progress is finished first. A handler still busy after 30 s is abandoned: the consumer is
    /// killed, its transaction rolls back with its connection, and its lock goes with its session.
    pub async fn shutdown(self) {
        if self
            .actor
            .stop_and_wait(None, Some(Duration::from_secs(30)))
            .await
            .is_err()
        {
            tracing::warn!(subscription = %self.name, "a handler did not finish within 30 s; killing its consumer");
            self.actor.kill();
        }
    }
}

/// Dropping the handle stops the consumer (without waiting for it); [`SubscriptionHandle::shutdown`]
/// waits.
impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        self.actor.stop(None);
    }
}

/// Moves the checkpoint of a subscription stopped on a failing handler past the event it stopped
/// on, so that it resumes after it when run again. Refuses (answers `false`) unless `event` is
/// the event it stopped on. The skipped position is kept in the row's `skipped` column and
/// logged: a poison event is passed over only by this explicit act.
///
/// # Errors
///
/// A database error.
pub async fn skip_failed_event(
    store: &PostgresStore,
    name: &str,
    event: Position,
) -> Result<bool, StoreError> {
    let client = store.pool().get().await?;
    let skipped = checkpoint::skip(&**client, name, event).await?;
    if skipped {
        tracing::warn!(subscription = name, %event, "an operator skipped a failing event");
    }
    Ok(skipped)
}
