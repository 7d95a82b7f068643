//! Course enrollment with the decision runtime: 200 students race for 3 courses of capacity 10,
//! and nobody overbooks. Shows a decision combining two projections (the course and the
//! student), typed rejections (a course never defined, a second subscription, a sixth course, a
//! full course), and the invariant counted straight from the `events` table with SQL.
//!
//! The decision, its events and the invariant query are the shared scenario's, in
//! `load-tests/scenarios/src/enrollment.rs` (the load tests run the same ones); this file is the
//! story.
//!
//! Run: `cargo run --example enrollment` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Query, Runtime};
use dcb_scenarios::enrollment::{INVARIANT_SQL, MAX_COURSES, Refused, Subscribe, course_defined};

const COURSES: [&str; 3] = ["algebra", "biology", "chemistry"];
const CAPACITY: u64 = 10;
const STUDENTS: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    // The three raced courses, and MAX_COURSES + 1 seminars with room for the rules below.
    let seminars: Vec<String> = (1..=MAX_COURSES + 1)
        .map(|s| format!("seminar{s}"))
        .collect();
    let definitions = COURSES
        .iter()
        .map(|course| course_defined(course, CAPACITY))
        .chain(seminars.iter().map(|s| course_defined(s, CAPACITY)))
        .collect();
    store.append(definitions).await?;
    let runtime = Runtime::builder(store).start().await?;

    // The rules, one command each.
    let never_defined = runtime.execute(Subscribe::new("dance", "ada")).await;
    println!("subscribe to a course never defined: {never_defined:?}");
    for seminar in &seminars[..MAX_COURSES] {
        runtime.execute(Subscribe::new(seminar, "ada")).await?;
    }
    let again = runtime.execute(Subscribe::new("seminar1", "ada")).await;
    let one_more = runtime
        .execute(Subscribe::new(&*seminars[MAX_COURSES], "ada"))
        .await;
    println!("ada holds {MAX_COURSES} seminars; seminar1 again: {again:?}; one more: {one_more:?}");
    if !matches!(
        never_defined,
        Err(ExecuteError::Rejected(Refused::NoSuchCourse))
    ) || !matches!(
        again,
        Err(ExecuteError::Rejected(Refused::AlreadySubscribed))
    ) || !matches!(
        one_more,
        Err(ExecuteError::Rejected(Refused::TooManyCourses))
    ) {
        return Err("a subscription that breaks a rule was not refused".into());
    }

    // The race: every student, concurrently, subscribes to one of the three courses.
    let mut racers = Vec::new();
    for n in 0..STUDENTS {
        let runtime = runtime.clone();
        racers.push(tokio::spawn(async move {
            let course = COURSES[n % COURSES.len()];
            runtime
                .execute(Subscribe::new(course, format!("s{n}")))
                .await
        }));
    }
    let (mut committed, mut full) = (0, 0);
    for racer in racers {
        match racer.await? {
            Ok(_) => committed += 1,
            Err(ExecuteError::Rejected(Refused::CourseFull)) => full += 1,
            Err(e) => return Err(format!("unexpected outcome: {e:?}").into()),
        }
    }
    println!(
        "{STUDENTS} students race: {committed} subscriptions committed, {full} refused because \
         the course was full"
    );
    runtime.shutdown().await;

    let client = db.client().await?;
    let raced: &[&str] = &COURSES;
    for row in client
        .query(
            "SELECT payload->>'course_id', count(*) FROM events \
             WHERE type = 'StudentSubscribed' AND payload->>'course_id' = ANY($1) \
             GROUP BY 1 ORDER BY 1",
            &[&raced],
        )
        .await?
    {
        let (course, count): (String, i64) = (row.get(0), row.get(1));
        println!("  {course}: {count} students (capacity {CAPACITY})");
    }
    let violations = dcb_scenarios::count(&client, INVARIANT_SQL).await?;
    println!(
        "violations counted from the events table (overbooked, never defined, twice, more than \
         {MAX_COURSES} courses): {violations}"
    );
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    if violations != 0 {
        return Err("a rule was broken".into());
    }
    if committed != COURSES.len() * CAPACITY as usize {
        return Err("the raced courses were not filled exactly".into());
    }
    if stored.events.len() != COURSES.len() + seminars.len() + MAX_COURSES + committed {
        return Err("the store does not hold the subscriptions that were committed".into());
    }
    Ok(())
}
