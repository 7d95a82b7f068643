//! The warm state a command actor keeps: the folded state of recent leaf projections, each with
//! the position up to which it has folded the store, so the next read of a boundary reads only
//! what is new, or none at all while the state is current.

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
    leaves: HashMap<Leaf, Entry>,
}

struct Entry {
    state: State,
    seen: Option<Position>,
    /// Folded up to this actor's own last append on the leaf: nothing else is expected after
    /// `seen`, so a chain may decide on it without reading first (its append condition still
    /// finds out if something was).
    current: bool,
}

/// A command's state made of its leaves' cached states.
pub(super) struct Warm {
    /// `None` unless every leaf is cached.
    pub(super) state: Option<State>,
    /// The position each leaf has seen (all `None` when cold).
    pub(super) seen: Vec<Option<Position>>,
    /// Every leaf is current (see [`WarmCache::keep`]).
    pub(super) current: bool,
}

impl WarmCache {
    /// A copy of the warm state of `command`'s projection; the leaves stay cached, since another
    /// command of the chain may share one.
    ///
    /// # Errors
    ///
    /// The projection panicked while joining its leaves' states (the message).
    pub(super) fn warm(&self, command: &dyn ErasedCommand) -> Result<Warm, String> {
        let parts = command.parts();
        let cold = || Warm {
            state: None,
            seen: vec![None; parts.len()],
            current: false,
        };
        let Some(cached) = parts
            .iter()
            .map(|leaf| self.leaves.get(leaf))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(cold());
        };
        let states: Vec<&State> = cached.iter().map(|entry| &entry.state).collect();
        Ok(match command.join(&states)? {
            Some(state) => Warm {
                state: Some(state),
                seen: cached.iter().map(|entry| entry.seen).collect(),
                current: cached.iter().all(|entry| entry.current),
            },
            None => cold(),
        })
    }

    /// Keeps `state` of `command`'s projection, folded up to `head`, leaf by leaf; `current` when
    /// `head` is this actor's own append, which nothing matching the projection preceded since
    /// the state's last read.
    ///
    /// # Errors
    ///
    /// The projection panicked while splitting the state into its leaves' (the message).
    pub(super) fn keep(
        &mut self,
        command: &dyn ErasedCommand,
        state: &State,
        head: Option<Position>,
        current: bool,
    ) -> Result<(), String> {
        let parts = command.split(state)?;
        if self.leaves.len() + parts.len() > CACHED_LEAVES {
            self.leaves.clear();
        }
        for (leaf, part) in command.parts().iter().zip(parts) {
            self.leaves.insert(
                leaf.clone(),
                Entry {
                    state: part,
                    seen: head,
                    current,
                },
            );
        }
        Ok(())
    }

    /// Something was appended that `command`'s leaves have not seen: their next chain reads.
    pub(super) fn distrust(&mut self, command: &dyn ErasedCommand) {
        for leaf in command.parts() {
            if let Some(entry) = self.leaves.get_mut(leaf) {
                entry.current = false;
            }
        }
    }
}
