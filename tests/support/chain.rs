//! Commands taken together as one chain. A chain is forced with one actor and a gate
//! (`tests/support/gate.rs`; the binary declares `mod gate` beside this module): a first command
//! holds the actor inside `decide` while the others queue behind it; opening the gate lets them
//! run as one chain.
#![allow(dead_code)] // each test binary uses part of it

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use dcb_runtime::{Committed, Decision, EventStore, Position, Runtime, SequencedEvent};

use crate::gate::{Gate, finish, poll_each_once};

/// A command's outcome, whatever its decision's rejection type.
pub type Outcome = Result<Committed, String>;
/// A command on its way, submitted at its first poll.
pub type Submitted<T = Outcome> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `execute` (or `execute_with_key` with `key`) as a boxed future: the command is submitted at
/// its first poll.
pub fn submit<S, D>(runtime: &Runtime<S>, key: Option<&str>, decision: D) -> Submitted
where
    S: EventStore + 'static,
    D: Decision,
    D::Rejection: std::fmt::Debug,
{
    let runtime = runtime.clone();
    let key = key.map(str::to_owned);
    Box::pin(async move {
        let outcome = match key {
            Some(key) => runtime.execute_with_key(key, decision).await,
            None => runtime.execute(decision).await,
        };
        outcome.map_err(|e| format!("{e:?}"))
    })
}

/// Holds the runtime's only actor inside `decide` (of `holder`, whose gate is `gate`), submits
/// `queued` behind it in order, checks none of them was answered while the actor was held, then
/// opens the gate: the queued commands are then taken together, as one chain. Outcomes in order.
pub async fn as_one_chain<S, H, T>(
    runtime: &Runtime<S>,
    gate: &Arc<Gate>,
    holder: H,
    queued: Vec<Submitted<T>>,
) -> Vec<T>
where
    S: EventStore + 'static,
    H: Decision,
    H::Rejection: std::fmt::Debug,
    T: std::fmt::Debug,
{
    let held = tokio::spawn(submit(runtime, None, holder));
    gate.arrived(1).await;
    let polled = poll_each_once(queued).await;
    for (i, (_, output)) in polled.iter().enumerate() {
        assert!(
            output.is_none(),
            "command {i} was answered while the only actor was held: {output:?}"
        );
    }
    gate.open();
    held.await
        .expect("holder task")
        .expect("the holding command commits");
    finish(polled).await
}

#[track_caller]
pub fn committed(outcome: &Outcome, what: &str) -> Committed {
    match outcome {
        Ok(c) => c.clone(),
        Err(e) => panic!("{what}: expected a commit, got {e}"),
    }
}

#[track_caller]
pub fn at(events: &[SequencedEvent], position: Position) -> &SequencedEvent {
    events
        .iter()
        .find(|e| e.position == position)
        .unwrap_or_else(|| panic!("no event at {position}"))
}
