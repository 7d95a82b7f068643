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
    /// The last position folded (0: none).
    seen: watch::Sender<Position>,
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
            seen: watch::Sender::new(Position::new(0)),
        });
        while catch_up(store, &shared).await? {}
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
        *self.shared.seen.borrow()
    }

    /// Waits until the view has folded everything up to `position` (after an append at that
    /// position, to read one's own write).
    pub async fn caught_up_to(&self, position: Position) {
        let mut seen = self.shared.seen.subscribe();
        let _ = seen.wait_for(|p| *p >= position).await;
    }
}

/// Folds one page; whether more may follow at once.
async fn catch_up<P: Projection>(
    store: &PostgresStore,
    shared: &Shared<P>,
) -> Result<bool, StoreError> {
    let from = *shared.seen.borrow();
    let read = store
        .read(
            &shared.projection.query(),
            ReadOptions::default().after(from).limit(PAGE),
        )
        .await?;
    let full = read.events.len() == PAGE;
    let to = match read.events.last() {
        Some(last) if full => last.position,
        _ => read.head.unwrap_or(from).max(from),
    };
    if !read.events.is_empty() {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        shared.projection.fold(&mut state, &read.events);
    }
    if to > from {
        shared.seen.send_replace(to);
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
            Err(e) => {
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
