//! The enrollment decision used by the runtime tests: a student subscribes to a course that
//! exists, is not full, and that the student has not joined yet.

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

pub fn course_defined(course: &str, capacity: u32) -> Event {
    Event::new(
        "CourseDefined",
        json!({"course_id": course, "capacity": capacity}),
    )
    .tagged("course", course)
}

pub fn subscribed(course: &str, student: &str) -> Event {
    Event::new(
        "StudentSubscribed",
        json!({"course_id": course, "student_id": student}),
    )
    .tagged("course", course)
    .tagged("student", student)
}

/// The course: its capacity (if defined) and how many have subscribed.
pub struct Course(pub String);

#[derive(Default, Debug, Clone)]
pub struct CourseState {
    pub capacity: Option<u64>,
    pub subscribed: u64,
}

impl Projection for Course {
    type State = CourseState;
    fn query(&self) -> Query {
        QueryItem::new(
            ["CourseDefined", "StudentSubscribed"],
            [P("course", self.0.clone())],
        )
        .into()
    }
    fn initial_state(&self) -> CourseState {
        CourseState::default()
    }
    fn evolve(&self, state: &mut CourseState, event: &SequencedEvent) {
        match event.event.event_type() {
            "CourseDefined" => state.capacity = event.event.payload()["capacity"].as_u64(),
            _ => state.subscribed += 1,
        }
    }
}

/// The student's subscriptions: the courses joined.
pub struct Student(pub String);

impl Projection for Student {
    type State = Vec<String>;
    fn query(&self) -> Query {
        QueryItem::new(["StudentSubscribed"], [P("student", self.0.clone())]).into()
    }
    fn initial_state(&self) -> Vec<String> {
        Vec::new()
    }
    fn evolve(&self, state: &mut Vec<String>, event: &SequencedEvent) {
        if let Some(c) = event.event.payload()["course_id"].as_str() {
            state.push(c.to_owned());
        }
    }
}

pub struct Subscribe {
    pub course: String,
    pub student: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchCourse,
    CourseFull,
    AlreadySubscribed,
}

impl Decision for Subscribe {
    const NAME: &'static str = "subscribe";
    type Projection = (Course, Student);
    type Rejection = Refusal;

    fn projection(&self) -> (Course, Student) {
        (Course(self.course.clone()), Student(self.student.clone()))
    }

    fn decide(&self, (course, joined): &(CourseState, Vec<String>)) -> Result<Vec<Event>, Refusal> {
        let capacity = course.capacity.ok_or(Refusal::NoSuchCourse)?;
        if joined.contains(&self.course) {
            return Err(Refusal::AlreadySubscribed);
        }
        if course.subscribed >= capacity {
            return Err(Refusal::CourseFull);
        }
        Ok(vec![subscribed(&self.course, &self.student)])
    }
}
