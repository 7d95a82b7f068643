//! Turns on consistency keys among the command actors of one process.
//!
//! Routing sends the commands of one key to one actor, but a command whose boundary spans several
//! keys (a transfer's two accounts) is routed by one of them: without more, it races with the
//! actor that owns the other. So an actor runs a chain only while it holds every key of the
//! chain's commands. Keys are taken in ascending order, the same order in every actor, so no two
//! actors ever wait for each other (deadlock-free); each key's waiters are served first come,
//! first served (tokio's mutex is fair). A key exists in the table only while held or awaited.
//!
//! The turnstile also remembers, for recently held keys, which holder held each last: a holder
//! that finds itself the last one on every key of its chain knows that no other actor of this
//! process appended on them since (its warm state may then be current).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as KeyLock, OwnedMutexGuard};

use super::leases::locked;

/// Keys whose last holder is remembered (a key's slot is its hash modulo this; a key whose slot
/// another key took since counts as held by someone else).
const STAMPS: usize = 4_096;

pub(crate) struct Turnstile {
    keys: Mutex<HashMap<u64, Arc<KeyLock<()>>>>,
    /// By slot: the key last held there, and its holder.
    stamps: Mutex<Vec<Option<(u64, u64)>>>,
    holders: AtomicU64,
}

impl Default for Turnstile {
    fn default() -> Self {
        Self {
            keys: Mutex::default(),
            stamps: Mutex::new(vec![None; STAMPS]),
            holders: AtomicU64::new(0),
        }
    }
}

/// The keys held by one chain; dropped, they pass to the next waiter.
pub(crate) struct Turn {
    turnstile: Arc<Turnstile>,
    held: Vec<(u64, OwnedMutexGuard<()>)>,
    /// The holder entering was the last to hold every one of the keys.
    pub(crate) held_last_by_this_holder: bool,
}

impl Turnstile {
    /// A new holder's identity, for [`Turnstile::enter`] (one per actor's lifetime).
    pub(crate) fn holder(&self) -> u64 {
        self.holders.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until `holder` holds every one of `keys` (sorted ascending, without repeats).
    pub(crate) async fn enter(self: &Arc<Self>, keys: &[u64], holder: u64) -> Turn {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted, unique");
        let mut turn = Turn {
            turnstile: self.clone(),
            held: Vec::with_capacity(keys.len()),
            held_last_by_this_holder: false,
        };
        for &key in keys {
            let lock = self
                .table()
                .entry(key)
                .or_insert_with(|| Arc::new(KeyLock::new(())))
                .clone();
            turn.held.push((key, lock.lock_owned().await));
        }
        // Every key is held: no other holder can stamp them meanwhile.
        let mut stamps = locked(&self.stamps);
        let mut last = true;
        for &key in keys {
            let slot = &mut stamps[slot_of(key)];
            last &= *slot == Some((key, holder));
            *slot = Some((key, holder));
        }
        turn.held_last_by_this_holder = last && !keys.is_empty();
        turn
    }

    /// Whether a chain holds or awaits one of `keys` now.
    pub(crate) fn holds_any(&self, keys: &[u64]) -> bool {
        let table = self.table();
        !table.is_empty() && keys.iter().any(|k| table.contains_key(k))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<KeyLock<()>>>> {
        // Nothing panics while the table is locked; a poisoned table is still consistent.
        locked(&self.keys)
    }
}

fn slot_of(key: u64) -> usize {
    // Keys are hashes: their low bits are as good as any.
    usize::try_from(key % STAMPS as u64).unwrap_or_default()
}

impl Drop for Turn {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        let mut table = self.turnstile.table();
        for (key, guard) in held {
            drop(guard);
            // Only the table's own reference left: nobody holds or awaits the key. A waiter
            // clones its reference under the table's lock, so it cannot appear after this check.
            if table
                .get(&key)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                table.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_key_is_held_by_one_turn_at_a_time() {
        let turnstile = Arc::new(Turnstile::default());
        let first = turnstile.enter(&[1, 2], 0).await;
        let t = turnstile.clone();
        let mut second = tokio::spawn(async move { t.enter(&[2, 3], 1).await });
        // The second turn waits on key 2; it gets it once the first turn ends.
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        assert!(futures::poll!(&mut second).is_pending());
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(turnstile.table().len(), 2, "keys 2 and 3 held");
        drop(second);
        assert!(turnstile.table().is_empty(), "no key left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_turns_never_run_together_and_never_deadlock() {
        let turnstile = Arc::new(Turnstile::default());
        // One counter per key: how many turns hold it right now.
        let holders: Arc<Vec<AtomicUsize>> =
            Arc::new((0..6).map(|_| AtomicUsize::new(0)).collect());
        let tasks: Vec<_> = (0..32usize)
            .map(|task| {
                let (turnstile, holders) = (turnstile.clone(), holders.clone());
                tokio::spawn(async move {
                    for round in 0..200usize {
                        let mut keys = vec![(task + round) % 6, (task * 7 + round * 3) % 6];
                        keys.sort_unstable();
                        keys.dedup();
                        let held: Vec<u64> =
                            keys.iter().map(|&k| u64::try_from(k).unwrap()).collect();
                        let turn = turnstile.enter(&held, task as u64).await;
                        for &k in &keys {
                            let before = holders[k].fetch_add(1, Ordering::SeqCst);
                            assert_eq!(before, 0, "key {k} held twice");
                        }
                        tokio::task::yield_now().await;
                        for &k in &keys {
                            holders[k].fetch_sub(1, Ordering::SeqCst);
                        }
                        drop(turn);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(turnstile.table().is_empty());
    }

    #[tokio::test]
    async fn a_holder_learns_whether_it_held_every_key_last() {
        let turnstile = Arc::new(Turnstile::default());
        let (a, b) = (turnstile.holder(), turnstile.holder());
        let enter = |keys: &[u64], holder| {
            let (turnstile, keys) = (turnstile.clone(), keys.to_vec());
            async move {
                turnstile
                    .enter(&keys, holder)
                    .await
                    .held_last_by_this_holder
            }
        };
        assert!(!enter(&[1, 2], a).await, "never held before");
        assert!(enter(&[1, 2], a).await);
        assert!(enter(&[2], a).await);
        assert!(!enter(&[2, 3], b).await, "2 was a's, 3 nobody's");
        assert!(!enter(&[1, 2], a).await, "b held 2 since");
        assert!(enter(&[1, 2], a).await);
        // A key sharing 1's slot takes it over: 1 is no longer known to be a's.
        let same_slot = [1 + STAMPS as u64];
        assert!(!enter(&same_slot, a).await);
        assert!(!enter(&[1], a).await);
        assert!(!enter(&[], a).await, "no keys: nothing known");
    }
}
