//! A command on its way through the runtime, with the decision's types erased.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::decision::{Decision, Projection};
use crate::error::AppendError;
use crate::event::{Event, Position, SequencedEvent};
use crate::query::Query;

/// What a command actor can do with any decision.
pub(crate) trait ErasedCommand: Send + Sync {
    fn name(&self) -> &'static str;
    fn read_query(&self) -> &Query;
    fn condition_query(&self) -> &Query;
    /// Folds the events matching its read query (the caller may pass more) and decides.
    fn decide(&self, events: &[SequencedEvent]) -> Decided;
}

/// The outcome of `decide`, with the rejection boxed and a panic caught.
pub(crate) enum Decided {
    Events(Vec<Event>),
    Rejected(Box<dyn Any + Send>),
    Panicked(String),
}

pub(crate) struct Command<D: Decision> {
    decision: D,
    read_query: Query,
    condition_query: Query,
}

impl<D: Decision> Command<D> {
    pub(crate) fn new(decision: D) -> Self {
        let read_query = decision.projection().query();
        let condition_query = decision.condition_query(&read_query);
        Self {
            decision,
            read_query,
            condition_query,
        }
    }

    pub(crate) fn key(&self) -> u64 {
        self.decision.consistency_key(&self.read_query)
    }
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

    fn decide(&self, events: &[SequencedEvent]) -> Decided {
        // A panicking decision fails its own command; the actor that ran it is restarted.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let projection = self.decision.projection();
            let mut state = projection.initial_state();
            projection.fold(
                &mut state,
                events.iter().filter(|e| self.read_query.matches(&e.event)),
            );
            self.decision.decide(&state)
        }));
        match outcome {
            Ok(Ok(events)) => Decided::Events(events),
            Ok(Err(rejection)) => Decided::Rejected(Box::new(rejection)),
            Err(panic) => Decided::Panicked(panic_message(panic.as_ref())),
        }
    }
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
    Committed {
        positions: Vec<Position>,
        events: Vec<Event>,
        attempts: u32,
    },
    Rejected(Box<dyn Any + Send>),
    ConflictsExhausted {
        attempts: u32,
    },
    Timeout,
    Panicked(String),
    Failed(AppendError),
    /// The job never ran (its actor stopped first): safe to submit again.
    Requeue,
}

/// A command queued on or running in a command actor. Dropping it unanswered (its actor died)
/// answers `Requeue`; either way it leaves its actor's queue count.
pub(crate) struct Job {
    pub(crate) command: Arc<dyn ErasedCommand>,
    pub(crate) attempts: u32,
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
            deadline,
            reply: Some(reply),
            queued,
        }
    }

    pub(crate) fn answer(mut self, outcome: JobOutcome) {
        if let Some(reply) = self.reply.take() {
            // The caller may have given up waiting; nothing to do then.
            let _ = reply.send(outcome);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(JobOutcome::Requeue);
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
