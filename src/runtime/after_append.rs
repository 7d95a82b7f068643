//! What a command actor does with the store's answer to a decided chain's append: the heart of
//! exactly-once, as a pure function of the answer, so that every case is a unit test.

use std::time::SystemTime;

use crate::append::Appended;
use crate::error::{AppendError, StoreError};
use crate::event::Position;

/// The next step after an append of a decided chain.
#[derive(Debug)]
pub(super) enum Next {
    /// Stored, or found stored: answer each command its positions, counted from `first`.
    Answer {
        first: Position,
        /// Another append stored the events (another execution of the same keyed commands).
        replayed: bool,
        /// When this append stored them (`None`: it stored nothing new).
        recorded_at: Option<SystemTime>,
    },
    /// Decide each command again, on its own, now.
    DecideSingly,
    /// The boundary changed since the read: back off, then decide again.
    Conflict,
    /// Certainly not stored, and retrying may succeed: decide again, one command at a time,
    /// after a back-off (a big chain may be what missed a timeout).
    RetryLater(StoreError),
    /// Stored or not is unknown, and retrying may succeed: send the very same append again
    /// (deciding again could store the commands twice).
    Resend(StoreError),
    /// A re-sent append failed in a way that does not prove its first send uncommitted: each
    /// caller learns the failure that made it re-send (its events may be stored; an idempotency
    /// key finds out).
    GiveUp,
    /// Refused for good: each caller learns why.
    Fail(AppendError),
}

/// The next step for a chain of `commands` decided on a read with head `read_head`, whose append
/// (`resent`: sent before, with an unknown outcome) was answered `answer`.
pub(super) fn after_append(
    answer: Result<Appended, AppendError>,
    commands: usize,
    read_head: Option<Position>,
    resent: bool,
) -> Next {
    match answer {
        Ok(appended) if appended.replayed && commands > 1 && Some(appended.first) <= read_head => {
            // Identical events were stored before this chain read them (a keyed command executed
            // again): the others decided on a state counting them twice, and nothing of theirs
            // is stored.
            Next::DecideSingly
        }
        Ok(appended) => Next::Answer {
            first: appended.first,
            replayed: appended.replayed,
            recorded_at: appended.recorded_at,
        },
        Err(AppendError::ConditionFailed { .. }) => Next::Conflict,
        Err(AppendError::Store(e)) if e.is_transient() && !e.may_have_committed() && !resent => {
            Next::RetryLater(e)
        }
        Err(AppendError::Store(e)) if e.is_transient() => Next::Resend(e),
        // Only a failed condition (above) or a duplicate id proves a first send uncommitted.
        Err(e) if resent && !matches!(e, AppendError::DuplicateEventId(_)) => Next::GiveUp,
        // Whose events were refused? Running them one at a time tells.
        Err(_) if commands > 1 => Next::DecideSingly,
        Err(e) => Next::Fail(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;
    use crate::limits::ValidationError;

    fn at(first: i64, replayed: bool) -> Result<Appended, AppendError> {
        Ok(Appended {
            first: Position::new(first),
            last: Position::new(first),
            replayed,
            recorded_at: (!replayed).then(SystemTime::now),
        })
    }

    fn head(p: i64) -> Option<Position> {
        Some(Position::new(p))
    }

    /// A transient error of unknown outcome: the connection dropped.
    fn lost() -> AppendError {
        AppendError::Store(StoreError::AnswerLost)
    }

    /// A transient error that certainly stored nothing: no connection could be had.
    fn never_sent() -> AppendError {
        AppendError::Store(StoreError::Closed)
    }

    fn duplicate() -> AppendError {
        AppendError::DuplicateEventId(Uuid::nil())
    }

    fn invalid() -> AppendError {
        AppendError::Invalid(ValidationError::NoEvents)
    }

    fn corrupt() -> AppendError {
        AppendError::Store(StoreError::Corrupt("x".to_owned()))
    }

    #[test]
    fn a_stored_chain_is_answered_its_positions_and_who_stored_them() {
        for resent in [false, true] {
            let next = after_append(at(7, false), 3, head(6), resent);
            assert!(
                matches!(next, Next::Answer { first, replayed: false, .. } if first.get() == 7)
            );
            let next = after_append(at(9, true), 1, head(6), resent);
            assert!(matches!(next, Next::Answer { first, replayed: true, .. } if first.get() == 9));
        }
    }

    #[test]
    fn a_replay_stored_before_the_read_is_decided_again_when_others_shared_the_chain() {
        // Alone, the command is answered the earlier execution.
        assert!(matches!(
            after_append(at(4, true), 1, head(6), false),
            Next::Answer { replayed: true, .. }
        ));
        // With others, they decided on a state that counted its events twice.
        assert!(matches!(
            after_append(at(4, true), 2, head(6), false),
            Next::DecideSingly
        ));
        assert!(matches!(
            after_append(at(6, true), 2, head(6), false),
            Next::DecideSingly
        ));
        // Stored after the read by another writer: the others' states did not count it.
        assert!(matches!(
            after_append(at(7, true), 2, head(6), false),
            Next::Answer { replayed: true, .. }
        ));
        // A store that was empty at the read.
        assert!(matches!(
            after_append(at(1, true), 2, None, false),
            Next::Answer { replayed: true, .. }
        ));
    }

    #[test]
    fn a_failed_condition_is_a_conflict_sent_once_or_again() {
        for resent in [false, true] {
            let failed = Err(AppendError::ConditionFailed { after: head(3) });
            assert!(matches!(
                after_append(failed, 2, head(3), resent),
                Next::Conflict
            ));
        }
    }

    #[test]
    fn an_unknown_outcome_is_resent_and_a_certain_failure_decided_again() {
        assert!(matches!(
            after_append(Err(lost()), 2, head(1), false),
            Next::Resend(StoreError::AnswerLost)
        ));
        assert!(matches!(
            after_append(Err(never_sent()), 2, head(1), false),
            Next::RetryLater(StoreError::Closed)
        ));
        // Once resent, even a failure that stored nothing this time says nothing of the first
        // send: send it again.
        assert!(matches!(
            after_append(Err(never_sent()), 2, head(1), true),
            Next::Resend(StoreError::Closed)
        ));
        assert!(matches!(
            after_append(Err(lost()), 1, head(1), true),
            Next::Resend(StoreError::AnswerLost)
        ));
    }

    #[test]
    fn a_resent_append_refused_for_another_reason_gives_up_but_a_duplicate_is_decided_again() {
        assert!(matches!(
            after_append(Err(corrupt()), 2, head(1), true),
            Next::GiveUp
        ));
        assert!(matches!(
            after_append(Err(invalid()), 1, head(1), true),
            Next::GiveUp
        ));
        // A duplicate id proves this append stored nothing (its own events would replay).
        assert!(matches!(
            after_append(Err(duplicate()), 2, head(1), true),
            Next::DecideSingly
        ));
        assert!(matches!(
            after_append(Err(duplicate()), 1, head(1), true),
            Next::Fail(AppendError::DuplicateEventId(_))
        ));
    }

    #[test]
    fn a_refused_chain_is_split_and_a_refused_command_fails() {
        for error in [duplicate, invalid, corrupt] {
            assert!(matches!(
                after_append(Err(error()), 3, head(1), false),
                Next::DecideSingly
            ));
            assert!(matches!(
                after_append(Err(error()), 1, head(1), false),
                Next::Fail(_)
            ));
        }
        let db = AppendError::Store(StoreError::Config(Arc::new(std::io::Error::other("x"))));
        assert!(matches!(
            after_append(Err(db), 1, None, false),
            Next::Fail(_)
        ));
    }
}
