//! The warm state a command actor keeps: the folded state of recent leaf projections, each with
//! the position up to which it has folded the store, so the next read of a boundary reads only
//! what is new.

use std::collections::HashMap;

use super::job::{ErasedCommand, State};
use crate::decision::Leaf;
use crate::event::Position;

/// Leaf projections kept per actor; beyond this the cache starts over.
const CACHED_LEAVES: usize = 4_096;

/// Folded states by leaf projection (by value: type and fields). A tuple of projections is kept
/// leaf by leaf, so tuples sharing a leaf (two transfers from one account) share its state.
#[derive(Default)]
pub(super) struct WarmCache {
    leaves: HashMap<Leaf, (State, Option<Position>)>,
}

/// A command's state made of its leaves' cached states, and the position each leaf has seen;
/// `(None, [None..])` unless every leaf is cached.
pub(super) type Warm = (Option<State>, Vec<Option<Position>>);

impl WarmCache {
    /// A copy of the warm state of `command`'s projection; the leaves stay cached, since another
    /// command of the chain may share one.
    ///
    /// # Errors
    ///
    /// The projection panicked while joining its leaves' states (the message).
    pub(super) fn warm(&self, command: &dyn ErasedCommand) -> Result<Warm, String> {
        let parts = command.parts();
        let cold = (None, vec![None; parts.len()]);
        let Some(cached) = parts
            .iter()
            .map(|leaf| self.leaves.get(leaf))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(cold);
        };
        let states: Vec<&State> = cached.iter().map(|(state, _)| state).collect();
        Ok(match command.join(&states)? {
            Some(state) => (Some(state), cached.iter().map(|(_, seen)| *seen).collect()),
            None => cold,
        })
    }

    /// Keeps `state` of `command`'s projection, folded up to `head`, leaf by leaf.
    ///
    /// # Errors
    ///
    /// The projection panicked while splitting the state into its leaves' (the message).
    pub(super) fn keep(
        &mut self,
        command: &dyn ErasedCommand,
        state: &State,
        head: Option<Position>,
    ) -> Result<(), String> {
        let parts = command.split(state)?;
        if self.leaves.len() + parts.len() > CACHED_LEAVES {
            self.leaves.clear();
        }
        for (leaf, part) in command.parts().iter().zip(parts) {
            self.leaves.insert(leaf.clone(), (part, head));
        }
        Ok(())
    }
}
