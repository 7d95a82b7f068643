//! Projections that differ only in a field their query does not name never share a state
//! (issue 9.3).
//!
//! The rule: a student takes at most 2 courses per semester. The semester is a field of the
//! projection; its query names only the student, and `evolve` counts the enrolments of its own
//! semester. Eight enrolments of one student, semesters alternating, must commit exactly 2 per
//! semester, as the pure decision says, whether they run one after the other (warm state) or
//! all at once (one chain).

#[path = "support/gate.rs"]
mod gate;

use dcb_runtime::testing::{TestDatabase, given};
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, P, PostgresStore, Projection, Query, QueryItem,
    ReadOptions, Runtime, SequencedEvent,
};
use gate::{finish, poll_each_once};
use serde_json::json;

/// A student's enrolments in one semester.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Semester {
    student: String,
    semester: u32,
}

impl Projection for Semester {
    type State = u32;
    fn query(&self) -> Query {
        QueryItem::new(["Enrolled"], [P("student", &*self.student)]).into()
    }
    fn initial_state(&self) -> u32 {
        0
    }
    fn evolve(&self, taken: &mut u32, event: &SequencedEvent) {
        if event.event.payload()["semester"] == self.semester {
            *taken += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SemesterFull;

struct Enrol {
    student: String,
    course: u32,
    semester: u32,
}

impl Decision for Enrol {
    const NAME: &'static str = "enrol";
    type Projection = Semester;
    type Rejection = SemesterFull;
    fn projection(&self) -> Semester {
        Semester {
            student: self.student.clone(),
            semester: self.semester,
        }
    }
    fn decide(&self, taken: &u32) -> Result<Vec<Event>, SemesterFull> {
        if *taken >= 2 {
            return Err(SemesterFull);
        }
        Ok(vec![
            Event::new(
                "Enrolled",
                json!({"course": self.course, "semester": self.semester}),
            )
            .tagged("student", &*self.student),
        ])
    }
}

/// Enrolment `i` of student s1: courses 0..8, semesters 1, 2, 1, 2, ...
fn enrolment(i: u32) -> Enrol {
    Enrol {
        student: "s1".to_owned(),
        course: i,
        semester: 1 + i % 2,
    }
}

async fn runtime() -> (TestDatabase, Runtime<PostgresStore>) {
    let db = TestDatabase::create().await.expect("test database");
    let runtime = Runtime::builder(db.store().await.expect("store"))
        .actors(1)
        .start()
        .await
        .expect("runtime");
    (db, runtime)
}

async fn history(runtime: &Runtime<PostgresStore>) -> Vec<Event> {
    let read = runtime
        .store()
        .read(&Query::all(), ReadOptions::default())
        .await
        .expect("read");
    read.events.into_iter().map(|e| e.event).collect()
}

/// Enrolments stored per semester, with SQL.
async fn stored_per_semester(db: &TestDatabase) -> Vec<(i64, i64)> {
    let client = db.client().await.expect("direct client");
    client
        .query(
            "SELECT (payload->>'semester')::bigint, count(*) FROM events \
             WHERE type = 'Enrolled' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("count")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn one_after_the_other_each_semester_counts_its_own_enrolments() {
    let (db, runtime) = runtime().await;
    for i in 0..8 {
        let expected = given(history(&runtime).await)
            .when(enrolment(i))
            .into_result();
        let answer = runtime.execute(enrolment(i)).await;
        match (answer, expected) {
            (Ok(committed), Ok(events)) => assert_eq!(
                committed.events[0].payload(),
                events[0].payload(),
                "enrolment {i}"
            ),
            (Err(ExecuteError::Rejected(SemesterFull)), Err(SemesterFull)) => {}
            (answer, expected) => {
                panic!("enrolment {i}: {answer:?}, the decision says {expected:?}")
            }
        }
    }
    assert_eq!(stored_per_semester(&db).await, [(1, 2), (2, 2)]);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_at_once_each_semester_counts_its_own_enrolments() {
    let (db, runtime) = runtime().await;
    let polled = poll_each_once((0..8).map(|i| runtime.execute(enrolment(i)))).await;
    let answers = finish(polled).await;
    let committed: Vec<u32> = answers
        .iter()
        .zip(0..)
        .filter_map(|(a, i)| a.is_ok().then_some(i))
        .collect();
    for (answer, i) in answers.iter().zip(0..) {
        assert!(
            matches!(answer, Ok(_) | Err(ExecuteError::Rejected(SemesterFull))),
            "enrolment {i}: {answer:?}"
        );
    }
    // One actor decides them in submission order: the first two of each semester commit.
    assert_eq!(committed, [0, 1, 2, 3], "{answers:?}");
    assert_eq!(stored_per_semester(&db).await, [(1, 2), (2, 2)]);
    runtime.shutdown().await;
}
