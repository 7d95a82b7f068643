//! What the enrollment tests count with plain SQL over the `events` table.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;

use dcb_runtime::testing::TestDatabase;

/// The `StudentSubscribed` events of each course (by the payload's `course_id`), counted with
/// SQL over a direct connection; a course without any is absent.
pub async fn subscribed_per_course(db: &TestDatabase) -> HashMap<String, i64> {
    let client = db.client().await.expect("sql client");
    client
        .query(
            "SELECT payload->>'course_id', count(*) FROM events \
             WHERE type = 'StudentSubscribed' GROUP BY 1",
            &[],
        )
        .await
        .expect("count per course")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}
