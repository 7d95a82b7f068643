//! A projection kept live in memory: caught up when started, then following every append (woken
//! by notifications, polling as the fallback), for processes that answer reads from memory. Each
//! process keeps its own copy; nothing is checkpointed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::decision::Projection;
use crate::error::StoreError;
use crate::event::Position;
use crate::store::{EventStore, PostgresStore, ReadOptions};

/// Events folded per read.
const PAGE: usize = 1_000;
/// The longest a lost notification delays a view.
const POLL: Duration = Duration::from_millis(500);

/// A [`Projection`]'s state, kept up to date in memory. Cheap to clone; the last clone dropped
/// stops following.
pub struct View<P: Projection> {
    shared: Arc<Shared<P>>,
    _follower: Arc<Follower>,
}

impl<P: Projection> Clone for View<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _follower: self._follower.clone(),
        }
    }
}

impl<P: Projection> std::fmt::Debug for View<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

struct Shared<P: Projection> {
    projection: P,
    state: Mutex<P::State>,
    /// The last position folded (0: none), and whether following stopped.
    seen: watch::Sender<Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    position: Position,
    /// `evolve` panicked: the view stopped following, its state is as of `position`.
    broken: bool,
}

/// A view stopped following: its projection's `evolve` panicked on an event after its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the view stopped at {position}: its projection panicked on a later event")]
pub struct ViewStopped {
    /// The last position folded.
    pub position: Position,
}

struct Follower(JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<P: Projection> View<P> {
    /// Folds every stored event matching the projection's query, then follows new ones.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for a query that cannot be read; a database error while catching up.
    pub async fn start(store: &PostgresStore, projection: P) -> Result<Self, StoreError> {
        let query = projection.query();
        crate::query::validate_read(&query, store.limits())?;
        let shared = Arc::new(Shared {
            state: Mutex::new(projection.initial_state()),
            projection,
            seen: watch::Sender::new(Seen {
                position: Position::new(0),
                broken: false,
            }),
        });
        while catch_up(store, &shared).await.map_err(|e| match e {
            Fold::Store(e) => e,
            Fold::Panicked => StoreError::Corrupt(format!(
                "the projection's evolve panicked on an event after {}",
                shared.seen.borrow().position
            )),
        })? {}
        let follower = tokio::spawn(follow(store.clone(), shared.clone()));
        Ok(Self {
            shared,
            _follower: Arc::new(Follower(follower)),
        })
    }

    /// Reads the state.
    pub fn read<R>(&self, f: impl FnOnce(&P::State) -> R) -> R {
        f(&self.shared.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the state.
    pub fn state(&self) -> P::State {
        self.read(Clone::clone)
    }

    /// The last position folded (0: none); the state is complete up to here.
    pub fn position(&self) -> Position {
        self.shared.seen.borrow().position
    }

    /// Waits until the view has folded everything up to `position` (after an append at that
    /// position, to read one's own write).
    ///
    /// # Errors
    ///
    /// [`ViewStopped`] if the projection panicked on an event before that.
    pub async fn caught_up_to(&self, position: Position) -> Result<(), ViewStopped> {
        let mut seen = self.shared.seen.subscribe();
        let seen = *seen
            .wait_for(|s| s.position >= position || s.broken)
            .await
            .expect("the sender lives in the view");
        if seen.position >= position {
            Ok(())
        } else {
            Err(ViewStopped {
                position: seen.position,
            })
        }
    }
}

/// Why a page was not folded.
enum Fold {
    Store(StoreError),
    /// `evolve` panicked; the state is left as it was before the page.
    Panicked,
}

/// Folds one page; whether more may follow at once.
async fn catch_up<P: Projection>(store: &PostgresStore, shared: &Shared<P>) -> Result<bool, Fold> {
    let from = shared.seen.borrow().position;
    let read = store
        .read(
            &shared.projection.query(),
            ReadOptions::default().after(from).limit(PAGE),
        )
        .await
        .map_err(Fold::Store)?;
    let full = read.events.len() == PAGE;
    let to = match read.events.last() {
        Some(last) if full => last.position,
        _ => read.head.unwrap_or(from).max(from),
    };
    if !read.events.is_empty() {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        // Folded into a copy, so that a panicking `evolve` leaves no half-applied page behind.
        let mut next = state.clone();
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.projection.fold(&mut next, &read.events);
        }));
        if folded.is_err() {
            drop(state);
            shared.seen.send_modify(|s| s.broken = true);
            return Err(Fold::Panicked);
        }
        *state = next;
    }
    if to > from {
        shared.seen.send_modify(|s| s.position = to);
    }
    Ok(full)
}

async fn follow<P: Projection>(store: PostgresStore, shared: Arc<Shared<P>>) {
    let mut wake = store.wakeups().subscribe();
    let mut faults = 0u32;
    loop {
        wake.borrow_and_update();
        match catch_up(&store, &shared).await {
            Ok(true) => {
                faults = 0;
                continue;
            }
            Ok(false) => faults = 0,
            Err(Fold::Panicked) => {
                tracing::error!(position = %shared.seen.borrow().position,
                    "a view's projection panicked; the view stopped following");
                return;
            }
            Err(Fold::Store(e)) => {
                crate::metrics::record_store_error("read", &e);
                faults = faults.saturating_add(1);
                let delay = Duration::from_millis(50).saturating_mul(1 << faults.min(7));
                tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                continue;
            }
        }
        let _ = tokio::time::timeout(POLL, wake.changed()).await;
    }
}
