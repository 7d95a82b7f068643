//! One active consumer per subscription name, across processes: the consumer holds a session
//! advisory lock on a connection of its own. The lock lives exactly as long as that session, so a
//! process that dies (SIGKILL included: the kernel closes its socket) or loses its connection
//! releases it at once, and a standby polling `pg_try_advisory_lock` takes over within one
//! takeover interval.
//!
//! Correctness never rests on the lock: every checkpoint advance is a compare-and-set on the
//! checkpoint row (see `checkpoint.rs`), so a consumer that lost its session without noticing yet
//! cannot apply a batch twice; the lock only keeps the others from doing the work in vain.

use crate::error::StoreError;
pub(crate) use crate::store::Session;

/// The advisory-lock key space of subscriptions (the two-int form; `DCBS` in ASCII).
const LOCK_SPACE: i32 = 0x4443_4253;

impl Session {
    /// Takes the subscription's lock if nobody holds it.
    pub(crate) async fn try_lock(&self, subscription_id: i32) -> Result<bool, StoreError> {
        let row = self
            .client()
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_SPACE, &subscription_id],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Gives the lock back and closes the session.
    pub(crate) async fn release(self, subscription_id: i32) {
        let _ = self
            .client()
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LOCK_SPACE, &subscription_id],
            )
            .await;
    }
}
