//! A decision with a hook that runs just before it decides: the store has answered the
//! decision's read and the runtime waits for nothing, so the hook can arm a cut proxy or wait at
//! a gate at a known point of the command's life.
#![allow(dead_code)] // each test binary uses part of it

use dcb_runtime::{Decision, Event, Projection};

/// `decision`, calling `hook` before each `decide`. Its name is the wrapped decision's, so keyed
/// executions of the two share their event ids.
pub struct Hooked<D> {
    pub decision: D,
    pub hook: Box<dyn Fn() + Send + Sync>,
}

impl<D: Decision> Hooked<D> {
    pub fn new(decision: D, hook: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            decision,
            hook: Box::new(hook),
        }
    }
}

impl<D: Decision> Decision for Hooked<D> {
    const NAME: &'static str = D::NAME;
    type Projection = D::Projection;
    type Rejection = D::Rejection;

    fn projection(&self) -> D::Projection {
        self.decision.projection()
    }

    fn decide(
        &self,
        state: &<D::Projection as Projection>::State,
    ) -> Result<Vec<Event>, D::Rejection> {
        (self.hook)();
        self.decision.decide(state)
    }
}
