//! Course enrollment with the decision runtime: 200 students race for 3 courses of capacity 10,
//! and nobody overbooks. Shows a decision combining two projections (the course and the
//! student), typed rejections, and the invariant counted straight from the `events` table.
//!
//! Run: `cargo run --example enrollment` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, P, Projection, Query, QueryItem, Runtime,
    SequencedEvent,
};
use serde_json::json;

/// A course: its capacity once defined, and how many subscribed.
struct Course(String);

impl Projection for Course {
    type State = (Option<u64>, u64);
    fn query(&self) -> Query {
        QueryItem::new(
            ["CourseDefined", "StudentSubscribed"],
            [P("course", &*self.0)],
        )
        .into()
    }
    fn initial_state(&self) -> Self::State {
        (None, 0)
    }
    fn evolve(&self, (capacity, subscribed): &mut Self::State, event: &SequencedEvent) {
        match event.event.event_type() {
            "CourseDefined" => *capacity = event.event.payload()["capacity"].as_u64(),
            _ => *subscribed += 1,
        }
    }
}

/// The courses a student holds.
struct Student(String);

impl Projection for Student {
    type State = Vec<String>;
    fn query(&self) -> Query {
        QueryItem::new(["StudentSubscribed"], [P("student", &*self.0)]).into()
    }
    fn initial_state(&self) -> Vec<String> {
        Vec::new()
    }
    fn evolve(&self, courses: &mut Vec<String>, event: &SequencedEvent) {
        courses.extend(
            event.event.payload()["course_id"]
                .as_str()
                .map(str::to_owned),
        );
    }
}

struct Subscribe {
    course: String,
    student: String,
}

#[derive(Debug)]
enum Refused {
    NoSuchCourse,
    Full,
    AlreadySubscribed,
    TooManyCourses,
}

impl Decision for Subscribe {
    const NAME: &'static str = "subscribe";
    type Projection = (Course, Student);
    type Rejection = Refused;

    fn projection(&self) -> Self::Projection {
        (Course(self.course.clone()), Student(self.student.clone()))
    }

    fn decide(
        &self,
        ((capacity, subscribed), held): &((Option<u64>, u64), Vec<String>),
    ) -> Result<Vec<Event>, Refused> {
        let capacity = capacity.ok_or(Refused::NoSuchCourse)?;
        if held.contains(&self.course) {
            return Err(Refused::AlreadySubscribed);
        }
        if held.len() >= 5 {
            return Err(Refused::TooManyCourses);
        }
        if *subscribed >= capacity {
            return Err(Refused::Full);
        }
        Ok(vec![
            Event::new(
                "StudentSubscribed",
                json!({"course_id": self.course, "student_id": self.student}),
            )
            .tagged("course", &*self.course)
            .tagged("student", &*self.student),
        ])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    for course in ["algebra", "biology", "chemistry"] {
        store
            .append(vec![
                Event::new(
                    "CourseDefined",
                    json!({"course_id": course, "capacity": 10}),
                )
                .tagged("course", course),
            ])
            .await?;
    }
    let runtime = Runtime::builder(store).start().await?;

    let mut racers = Vec::new();
    for n in 0..200 {
        let runtime = runtime.clone();
        racers.push(tokio::spawn(async move {
            let course = ["algebra", "biology", "chemistry"][n % 3].to_owned();
            runtime
                .execute(Subscribe {
                    course,
                    student: format!("s{n}"),
                })
                .await
        }));
    }
    let (mut committed, mut full) = (0, 0);
    for racer in racers {
        match racer.await? {
            Ok(_) => committed += 1,
            Err(ExecuteError::Rejected(Refused::Full)) => full += 1,
            Err(e) => return Err(format!("unexpected outcome: {e:?}").into()),
        }
    }
    println!("{committed} subscriptions committed, {full} refused because the course was full");

    let client = db.client().await?;
    for row in client
        .query(
            "SELECT payload->>'course_id', count(*) FROM events \
             WHERE type = 'StudentSubscribed' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
    {
        let (course, count): (String, i64) = (row.get(0), row.get(1));
        println!("  {course}: {count} students (capacity 10)");
        if count > 10 {
            return Err(format!("{course} is overbooked").into());
        }
    }
    runtime.shutdown().await;
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    Ok(())
}
