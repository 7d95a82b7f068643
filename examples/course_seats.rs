//! The read side: a course-seats table kept by a **transactional** subscription (its writes and
//! its checkpoint commit together, so each subscription counts exactly once), and a welcome
//! notice sent **at least once** per subscription (the checkpoint advances after the sending;
//! the event id is the key to deduplicate by). 120 students race for 3 courses of capacity 10
//! through the runtime while both subscriptions follow; at the end the table is compared with a
//! fold over `events` in SQL.
//!
//! Run: `cargo run --example course_seats` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use std::collections::HashSet;

use dcb_runtime::subscription::{Handler, HandlerError, Subscription, TransactionalHandler};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::tokio_postgres::Transaction;
use dcb_runtime::{EventStore, Position, Query, QueryItem, Runtime, SequencedEvent};
use dcb_scenarios::enrollment::{Subscribe, course_defined};

const COURSES: [&str; 3] = ["algebra", "biology", "chemistry"];
const STUDENTS: usize = 120;

/// `course_seats(course, capacity, taken)`, one statement per event kind per batch.
struct Seats;

impl TransactionalHandler for Seats {
    async fn handle(
        &mut self,
        tx: &Transaction<'_>,
        events: &[SequencedEvent],
    ) -> Result<(), HandlerError> {
        for e in events {
            let payload = e.event.payload();
            let course = payload["course_id"]
                .as_str()
                .ok_or("an event without course_id")?;
            match e.event.event_type() {
                "CourseDefined" => {
                    let capacity = payload["capacity"].as_i64().ok_or("no capacity")?;
                    tx.execute(
                        "INSERT INTO course_seats (course, capacity, taken) VALUES ($1, $2, 0) \
                         ON CONFLICT (course) DO UPDATE SET capacity = EXCLUDED.capacity",
                        &[&course, &capacity],
                    )
                    .await?;
                }
                _ => {
                    tx.execute(
                        "UPDATE course_seats SET taken = taken + 1 WHERE course = $1",
                        &[&course],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// "Sends" a welcome notice per subscription, skipping ids it has already sent (a real sender
/// would keep them where the mail goes, or pass the id on as an idempotency key).
#[derive(Default)]
struct Welcome {
    sent: HashSet<uuid::Uuid>,
}

impl Handler for Welcome {
    async fn handle(&mut self, events: &[SequencedEvent]) -> Result<(), HandlerError> {
        for e in events {
            if self.sent.insert(e.event.id()) && self.sent.len() <= 3 {
                let p = e.event.payload();
                println!(
                    "welcome notice: {} joined {}",
                    p["student_id"], p["course_id"]
                );
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE course_seats (course text PRIMARY KEY, capacity bigint NOT NULL, \
             taken bigint NOT NULL)",
        )
        .await?;
    let seats = Subscription::new(
        "course-seats",
        QueryItem::of_types(["CourseDefined", "StudentSubscribed"]).into(),
    )
    .run_transactional(&store, Seats)
    .await?;
    let welcome = Subscription::new(
        "welcome-notices",
        QueryItem::of_types(["StudentSubscribed"]).into(),
    )
    .run_at_least_once(&store, Welcome::default())
    .await?;

    store
        .append(COURSES.iter().map(|c| course_defined(c, 10)).collect())
        .await?;
    let runtime = Runtime::builder(store.clone()).start().await?;
    let commands = (0..STUDENTS).map(|s| {
        let runtime = runtime.clone();
        async move {
            let course = COURSES[s % COURSES.len()];
            runtime
                .execute(Subscribe::new(course, format!("s{s}")))
                .await
        }
    });
    let answers = futures::future::join_all(commands).await;
    let committed = answers.iter().filter(|a| a.is_ok()).count();
    println!("{committed} of {STUDENTS} subscriptions committed (the rest found a full course)");
    runtime.shutdown().await;

    let head = store
        .read(
            &Query::all(),
            dcb_runtime::ReadOptions::default().backwards().limit(1),
        )
        .await?
        .head
        .unwrap_or(Position::new(0));
    seats.caught_up_to(head).await?;
    welcome.caught_up_to(head).await?;
    for row in client
        .query(
            "SELECT course, capacity, taken FROM course_seats ORDER BY course",
            &[],
        )
        .await?
    {
        let (course, capacity, taken): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        println!("{course:<10} {taken:>2} of {capacity} seats taken");
    }
    // The table against a fold over the events, in SQL.
    let differences: i64 = client
        .query_one(
            "SELECT count(*) FROM course_seats s FULL JOIN ( \
                 SELECT payload->>'course_id' AS course, \
                        count(*) FILTER (WHERE type = 'StudentSubscribed') AS taken \
                 FROM events GROUP BY 1) f USING (course) \
             WHERE s.taken IS DISTINCT FROM f.taken",
            &[],
        )
        .await?
        .get(0);
    println!("course_seats vs a fold over events: {differences} difference(s)");
    seats.shutdown().await;
    welcome.shutdown().await;
    if differences != 0 || committed != 30 {
        return Err(
            format!("{differences} differences, {committed} committed (30 expected)").into(),
        );
    }
    Ok(())
}
