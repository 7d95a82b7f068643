//! **enrollment** — students subscribe to courses; a decision spanning two entities.
//!
//! `CourseDefined {course_id, capacity}` tagged `course:<id>`; `StudentSubscribed {course_id,
//! student_id}` tagged `course:<id>` and `student:<id>`. Rules: the course exists, is not full,
//! the student is not already subscribed to it, and holds fewer than [`MAX_COURSES`] courses.

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

/// How many courses a student may hold.
pub const MAX_COURSES: usize = 5;

/// Violations, replaying each course in position order: subscriptions to a course not defined
/// before them, subscriptions beyond the capacity in force (each one counts; every subscription
/// stored takes a seat, as the decision counts them), pairs of a student and a course subscribed
/// more than once, and students holding more than [`MAX_COURSES`] courses.
pub const INVARIANT_SQL: &str = "\
WITH ev AS (SELECT position, type, payload->>'course_id' AS course, \
                   payload->>'student_id' AS student, (payload->>'capacity')::bigint AS capacity \
            FROM events WHERE type IN ('CourseDefined', 'StudentSubscribed')), \
     seats AS (SELECT type, course, capacity, \
                      count(*) FILTER (WHERE type = 'CourseDefined') OVER w AS definitions, \
                      count(*) FILTER (WHERE type = 'StudentSubscribed') OVER w AS seat \
               FROM ev WINDOW w AS (PARTITION BY course ORDER BY position)), \
     placed AS (SELECT type, definitions, seat, \
                       max(capacity) OVER (PARTITION BY course, definitions) AS capacity \
                FROM seats), \
     subs AS (SELECT course, student FROM ev WHERE type = 'StudentSubscribed') \
SELECT (SELECT count(*) FROM placed WHERE type = 'StudentSubscribed' \
          AND (definitions = 0 OR capacity IS NULL OR seat > capacity)) \
     + (SELECT count(*) FROM (SELECT 1 FROM subs GROUP BY course, student HAVING count(*) > 1) d) \
     + (SELECT count(*) FROM (SELECT 1 FROM subs GROUP BY student HAVING count(*) > 5) m)";

/// The event defining course `id`.
pub fn course_defined(id: &str, capacity: u64) -> Event {
    Event::new(
        "CourseDefined",
        json!({"course_id": id, "capacity": capacity}),
    )
    .tagged("course", id)
}

/// The event of `student` subscribing to `course`.
pub fn student_subscribed(course: &str, student: &str) -> Event {
    Event::new(
        "StudentSubscribed",
        json!({"course_id": course, "student_id": student}),
    )
    .tagged("course", course)
    .tagged("student", student)
}

/// Courses `c0`..`c<n-1>` of the given capacity.
pub fn courses(n: usize, capacity: u64) -> Vec<Event> {
    (0..n)
        .map(|c| course_defined(&format!("c{c}"), capacity))
        .collect()
}

/// What a subscription needs to know about a course.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CourseState {
    /// The capacity, once the course is defined.
    pub capacity: Option<u64>,
    /// How many students subscribed.
    pub subscribed: u64,
}

/// A course's events.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Course(pub String);

impl Projection for Course {
    type State = CourseState;
    fn query(&self) -> Query {
        QueryItem::new(
            ["CourseDefined", "StudentSubscribed"],
            [P("course", &*self.0)],
        )
        .into()
    }
    fn initial_state(&self) -> CourseState {
        CourseState::default()
    }
    fn evolve(&self, state: &mut CourseState, event: &SequencedEvent) {
        if event.event.event_type() == "CourseDefined" {
            state.capacity = event.event.payload()["capacity"].as_u64();
        } else {
            state.subscribed += 1;
        }
    }
}

/// The courses a student holds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Student(pub String);

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

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The course was never defined.
    NoSuchCourse,
    /// The course is at capacity.
    CourseFull,
    /// The student already holds the course.
    AlreadySubscribed,
    /// The student holds [`MAX_COURSES`] courses.
    TooManyCourses,
}

/// `student` subscribes to `course`.
pub struct Subscribe {
    /// The course id.
    pub course: String,
    /// The student id.
    pub student: String,
}

impl Subscribe {
    /// The command.
    pub fn new(course: impl Into<String>, student: impl Into<String>) -> Self {
        Self {
            course: course.into(),
            student: student.into(),
        }
    }
}

impl Decision for Subscribe {
    const NAME: &'static str = "subscribe";
    type Projection = (Course, Student);
    type Rejection = Refused;

    fn projection(&self) -> (Course, Student) {
        (Course(self.course.clone()), Student(self.student.clone()))
    }

    fn decide(&self, (course, held): &(CourseState, Vec<String>)) -> Result<Vec<Event>, Refused> {
        let capacity = course.capacity.ok_or(Refused::NoSuchCourse)?;
        if held.contains(&self.course) {
            return Err(Refused::AlreadySubscribed);
        }
        if held.len() >= MAX_COURSES {
            return Err(Refused::TooManyCourses);
        }
        if course.subscribed >= capacity {
            return Err(Refused::CourseFull);
        }
        Ok(vec![student_subscribed(&self.course, &self.student)])
    }
}
