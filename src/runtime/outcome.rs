//! How a command ended, as counted by `dcb_commands_total{outcome}`.

use super::{Committed, ExecuteError};

/// The `outcome` label of `dcb_commands_total`: one per answer of [`crate::Runtime::execute`],
/// counted once, where the caller's answer is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommandOutcome {
    /// `Ok(Committed)`, a replay of an earlier execution included.
    Committed,
    /// [`ExecuteError::Rejected`]: the decision said no.
    Rejected,
    /// [`ExecuteError::ConflictsExhausted`].
    ConflictExhausted,
    /// [`ExecuteError::Overloaded`]: the actor's queue was full.
    Overloaded,
    /// [`ExecuteError::Timeout`].
    Timeout,
    /// [`ExecuteError::ShuttingDown`].
    ShuttingDown,
    /// Anything else: a panic, invalid events, a duplicate id, a store failure.
    Error,
}

impl CommandOutcome {
    /// Every outcome, in the order the dashboard lists them.
    pub const ALL: [CommandOutcome; 7] = [
        CommandOutcome::Committed,
        CommandOutcome::Rejected,
        CommandOutcome::ConflictExhausted,
        CommandOutcome::Overloaded,
        CommandOutcome::Timeout,
        CommandOutcome::ShuttingDown,
        CommandOutcome::Error,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CommandOutcome::Committed => "committed",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::ConflictExhausted => "conflict_exhausted",
            CommandOutcome::Overloaded => "overloaded",
            CommandOutcome::Timeout => "timeout",
            CommandOutcome::ShuttingDown => "shutting_down",
            CommandOutcome::Error => "error",
        }
    }

    /// The outcome of an answer.
    pub fn of<R>(answer: &Result<Committed, ExecuteError<R>>) -> Self {
        match answer {
            Ok(_) => CommandOutcome::Committed,
            Err(e) => e.outcome(),
        }
    }
}
