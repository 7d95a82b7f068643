//! Chains whose appends are out while their actor decides the next one.
//!
//! An actor decides one chain at a time, and a chain's append (a group-commit transaction) takes
//! longer than its read and decision. Waiting for it left the client's core idle while the
//! server appended, and the server's idle while the client read and decided. So a chain on keys
//! contended by no other process sends its append and lets its actor go on: the next chain
//! reads and decides while the first one commits. Only commands that cannot see the events
//! still out go on meanwhile: on other keys, and with a read and a condition matching none of
//! those events (they are not in the store yet: decided without them, a command would fail its
//! condition and be decided again). At most [`MAX_IN_FLIGHT`] appends are out at once.
//!
//! The answer comes back to the actor as a message and is settled there as an awaited one would
//! be (answers, retries, warm state). The turnstile's keys pass to other actors as soon as the
//! store answers, so no actor of the process ever waits for this actor's mailbox.
//!
//! Two rules keep chains long, both measured:
//! - The queue keeps its order: a chain beside an append out stops at the first command that
//!   append holds back. Taking the commands behind it, transfers among 100 accounts (whose
//!   chains hold most accounts) waited behind chain after chain on other keys: 0.7x the
//!   decisions, p99 40-50 ms against 11-25.
//! - A chain starts beside one out only once as many commands arrived as that one holds.
//!   Without it, with few callers per process (16 in each of 4 processes), every chain split in
//!   two, each paying a transaction and its turn at the store's commit order: 0.6-0.9x the
//!   decisions, 1.5x the server CPU per decision.

use uuid::Uuid;

use crate::event::Event;
use crate::event_index::EventIndex;
use crate::query::Query;

use super::job::Job;

/// Appends out at once per actor: one committing, and one decided behind it.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// The chains whose appends are out.
#[derive(Default)]
pub(crate) struct InFlight {
    chains: Vec<Sent>,
    /// Commands arrived since the last chain was taken that no append out holds back.
    arrived: usize,
    /// A queued command waits for an append out: none behind it goes first (so a command is
    /// never overtaken again and again by chains on other keys).
    held_back: bool,
}

/// A chain whose append is out: its keys and the events it writes.
struct Sent {
    /// Which chain: keys need not tell (two chains on no key may be out at once).
    append_id: Uuid,
    keys: Vec<u64>,
    commands: usize,
    events: Vec<Event>,
    /// To rule most queries out without matching each event.
    index: EventIndex,
}

impl Sent {
    /// Whether `query` may match one of the chain's events (a job reading it would miss them).
    fn may_be_matched_by(&self, query: &Query) -> bool {
        if query.is_all() {
            return true;
        }
        self.index.may_match(query) && self.events.iter().any(|e| query.matches(e))
    }
}

impl InFlight {
    /// Whether a chain may start now: none is out, or fewer than [`MAX_IN_FLIGHT`] and as many
    /// commands arrived as the largest out holds.
    pub(crate) fn may_start(&self) -> bool {
        self.chains.is_empty()
            || (self.chains.len() < MAX_IN_FLIGHT
                && !self.held_back
                && self.chains.iter().all(|c| self.arrived >= c.commands))
    }

    /// A job arrived at the back of the queue; whether a chain may start for it now.
    pub(crate) fn arrived(&mut self, job: &Job) -> bool {
        if self.blocks(job) {
            self.held_back = true;
        }
        if self.held_back {
            return false;
        }
        self.arrived += 1;
        self.may_start()
    }

    /// A chain is being taken from the queue.
    pub(crate) fn taking(&mut self) {
        self.arrived = 0;
        self.held_back = false;
    }

    /// The chain being taken stopped at a job an append out holds back.
    pub(crate) fn hold_back(&mut self) {
        self.held_back = true;
    }

    /// A chain of `commands` on `keys` (sorted) sent its append of `events` as `append_id`.
    pub(crate) fn sent(
        &mut self,
        append_id: Uuid,
        keys: Vec<u64>,
        commands: usize,
        events: &[Event],
    ) {
        self.chains.push(Sent {
            append_id,
            keys,
            commands,
            events: events.to_vec(),
            index: events.iter().fold(EventIndex::default(), |mut index, e| {
                index.add(e);
                index
            }),
        });
    }

    /// The append `append_id` was answered.
    pub(crate) fn answered(&mut self, append_id: Uuid) {
        if let Some(i) = self.chains.iter().position(|c| c.append_id == append_id) {
            self.chains.swap_remove(i);
        }
        // What it held back may go now.
        self.held_back = false;
    }

    /// Whether a job must wait for an append still out: one on its keys, or one whose events
    /// its read or its condition may match (they are not in the store yet).
    pub(crate) fn blocks(&self, job: &Job) -> bool {
        self.chains.iter().any(|chain| {
            job.command
                .keys()
                .iter()
                .any(|k| chain.keys.binary_search(k).is_ok())
                || chain.may_be_matched_by(job.command.read_query())
                || chain.may_be_matched_by(job.command.condition_query())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_its_own_chain_even_among_chains_on_no_key() {
        let mut in_flight = InFlight::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let opened = Event::new("Opened", serde_json::json!({}));
        let closed = Event::new("Closed", serde_json::json!({}));
        in_flight.sent(first, Vec::new(), 1, std::slice::from_ref(&opened));
        in_flight.sent(second, Vec::new(), 1, std::slice::from_ref(&closed));
        in_flight.answered(second);
        let out: Vec<Uuid> = in_flight.chains.iter().map(|c| c.append_id).collect();
        assert_eq!(out, [first]);
        // What is still out is what a read must wait for: the first chain's events.
        let opened_query: Query = crate::QueryItem::of_types(["Opened"]).into();
        let closed_query: Query = crate::QueryItem::of_types(["Closed"]).into();
        assert!(in_flight.chains[0].may_be_matched_by(&opened_query));
        assert!(!in_flight.chains[0].may_be_matched_by(&closed_query));
    }
}
