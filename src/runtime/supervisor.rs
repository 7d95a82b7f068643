//! The supervisor: starts the command actors, restarts any that fails (a panicking decision),
//! and samples the gauges. It overrides ractor's default of stopping when a child stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RetryPolicy;
use super::command_actor::{CommandActor, CommandMsg};
use super::leases::Leases;
use super::turnstile::Turnstile;
use crate::metrics as names;
use crate::store::EventStore;

/// Where commands for one range of keys go: the current actor, and how many commands it holds.
pub(crate) struct Slot {
    pub(crate) actor: watch::Sender<ActorRef<CommandMsg>>,
    pub(crate) queued: Arc<AtomicUsize>,
}

pub(crate) struct Supervisor<S> {
    pub(crate) store: Arc<S>,
    pub(crate) policy: RetryPolicy,
    pub(crate) max_chain: usize,
    pub(crate) actors: usize,
    pub(crate) turnstile: Arc<Turnstile>,
    pub(crate) leases: Option<Arc<Leases>>,
}

pub(crate) enum SupervisorMsg {
    /// Record the gauges.
    Sample,
}

pub(crate) struct SupervisorState {
    pub(crate) slots: Arc<[Slot]>,
    slot_of: HashMap<ActorId, usize>,
    sampler: JoinHandle<()>,
}

impl<S: EventStore + 'static> Supervisor<S> {
    fn child(&self) -> CommandActor<S> {
        CommandActor {
            store: self.store.clone(),
            policy: self.policy,
            max_chain: self.max_chain,
            turnstile: self.turnstile.clone(),
            leases: self.leases.clone(),
        }
    }
}

/// Sent to the caller of `start` once the actors are up.
pub(crate) type SlotsReady = tokio::sync::oneshot::Sender<Arc<[Slot]>>;

impl<S: EventStore + 'static> Actor for Supervisor<S> {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SlotsReady;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ready: SlotsReady,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut slots = Vec::with_capacity(self.actors);
        let mut slot_of = HashMap::new();
        for index in 0..self.actors {
            let (actor, _) = Actor::spawn_linked(None, self.child(), (), myself.get_cell()).await?;
            slot_of.insert(actor.get_id(), index);
            slots.push(Slot {
                actor: watch::Sender::new(actor),
                queued: Arc::new(AtomicUsize::new(0)),
            });
        }
        let slots: Arc<[Slot]> = slots.into();
        let _ = ready.send(slots.clone());
        // The gauges exist from the start (not a second later), then follow every second.
        sample(self.store.as_ref(), &slots, self.leases.as_deref());
        let sampler = myself.send_interval(Duration::from_secs(1), || SupervisorMsg::Sample);
        Ok(SupervisorState {
            slots,
            slot_of,
            sampler,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Sample => {
                sample(self.store.as_ref(), &state.slots, self.leases.as_deref())
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(index) = state.slot_of.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::warn!(actor = index, %error, "command actor failed; restarting it");
                metrics::counter!(names::ACTOR_RESTARTS_TOTAL).increment(1);
                let (actor, _) =
                    Actor::spawn_linked(None, self.child(), (), myself.get_cell()).await?;
                state.slot_of.insert(actor.get_id(), index);
                state.slots[index].actor.send_replace(actor);
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // A clean stop only happens at shutdown: nothing to restart.
                state.slot_of.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.sampler.abort();
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        sample(self.store.as_ref(), &state.slots, self.leases.as_deref());
        Ok(())
    }
}

#[allow(clippy::cast_precision_loss)] // gauges of counts far below 2^52
fn sample<S: EventStore>(store: &S, slots: &[Slot], leases: Option<&Leases>) {
    if let Some(leases) = leases {
        metrics::gauge!(names::LEASED_KEYS).set(leases.count() as f64);
    }
    let queued: usize = slots.iter().map(|s| s.queued.load(Ordering::Acquire)).sum();
    metrics::gauge!(names::QUEUE_DEPTH).set(queued as f64);
    if let Some(pool) = store.pool_status() {
        metrics::gauge!(names::POOL_CONNECTIONS, "state" => "size").set(pool.size as f64);
        metrics::gauge!(names::POOL_CONNECTIONS, "state" => "available").set(pool.available as f64);
        metrics::gauge!(names::POOL_CONNECTIONS, "state" => "waiting").set(pool.waiting as f64);
    }
}
