//! The scenarios' decisions, their set-up and their invariants (counted with SQL).

use dcb_runtime::{
    Decision, Event, EventStore, P, PostgresStore, Projection, Query, QueryItem, SequencedEvent,
};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    Disjoint,
    Invoice,
    Enrollment,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Disjoint => "disjoint",
            Scenario::Invoice => "invoice",
            Scenario::Enrollment => "enrollment",
        }
    }
}

/// Course capacity in the enrollment scenario.
pub(crate) const CAPACITY: u64 = 10;

pub(crate) async fn prepare(
    scenario: Scenario,
    store: &PostgresStore,
    keys: usize,
) -> anyhow::Result<()> {
    if scenario == Scenario::Enrollment {
        let courses: Vec<Event> = (0..keys)
            .map(|c| {
                Event::new(
                    "CourseDefined",
                    json!({"course_id": format!("c{c}"), "capacity": CAPACITY}),
                )
                .tagged("course", format!("c{c}"))
            })
            .collect();
        for chunk in courses.chunks(1_000) {
            store.append(chunk.to_vec()).await?;
        }
    }
    Ok(())
}

/// Violations of the scenario's invariant, counted straight from the `events` table.
pub(crate) async fn violations(
    scenario: Scenario,
    client: &tokio_postgres::Client,
) -> anyhow::Result<i64> {
    let sql = match scenario {
        // Each boundary holds one event.
        Scenario::Disjoint => {
            "SELECT count(*) FROM (SELECT tags[1] FROM events GROUP BY 1 HAVING count(*) > 1) d"
        }
        // Numbers are exactly 1..n: duplicates plus numbers out of range.
        Scenario::Invoice => {
            "SELECT (count(*) - count(DISTINCT payload->>'number'))
                  + count(*) FILTER (WHERE (payload->>'number')::bigint NOT BETWEEN 1 AND n)
             FROM events, (SELECT count(*) AS n FROM events WHERE type = 'InvoiceCreated') t
             WHERE type = 'InvoiceCreated'"
        }
        // No course above capacity, no student twice in a course.
        Scenario::Enrollment => {
            "SELECT (SELECT count(*) FROM (SELECT payload->>'course_id' FROM events
                     WHERE type = 'StudentSubscribed' GROUP BY 1 HAVING count(*) > 10) o)
                  + (SELECT count(*) FROM (SELECT payload->>'course_id', payload->>'student_id'
                     FROM events WHERE type = 'StudentSubscribed' GROUP BY 1, 2 HAVING count(*) > 1) d)"
        }
    };
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Nothing to read: the boundary is new. `Create` appends one event on its own tag.
pub(crate) struct Create {
    tag: String,
}

impl Create {
    pub(crate) fn new(worker: usize, n: u64) -> Self {
        Self {
            tag: format!("{worker}-{n}"),
        }
    }
}

/// Whether a boundary already holds an event.
pub(crate) struct Exists(Query);

impl Projection for Exists {
    type State = bool;
    fn query(&self) -> Query {
        self.0.clone()
    }
    fn initial_state(&self) -> bool {
        false
    }
    fn evolve(&self, state: &mut bool, _event: &SequencedEvent) {
        *state = true;
    }
}

impl Decision for Create {
    const NAME: &'static str = "create";
    type Projection = Exists;
    type Rejection = &'static str;

    fn projection(&self) -> Exists {
        Exists(QueryItem::with_tags([P("thing", self.tag.clone())]).into())
    }

    fn decide(&self, exists: &bool) -> Result<Vec<Event>, &'static str> {
        if *exists {
            return Err("already exists");
        }
        Ok(vec![
            Event::new("ThingCreated", json!({})).tagged("thing", self.tag.clone()),
        ])
    }
}

/// The next invoice number: one global boundary, numbers 1..n without gaps.
pub(crate) struct NextInvoice;

pub(crate) struct LastInvoice;

impl Projection for LastInvoice {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::of_types(["InvoiceCreated"]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, last: &mut u64, event: &SequencedEvent) {
        let number = event.event.payload()["number"].as_u64().unwrap_or(0);
        *last = (*last).max(number);
    }
}

impl Decision for NextInvoice {
    const NAME: &'static str = "next_invoice";
    type Projection = LastInvoice;
    type Rejection = std::convert::Infallible;

    fn projection(&self) -> LastInvoice {
        LastInvoice
    }

    fn decide(&self, last: &u64) -> Result<Vec<Event>, Self::Rejection> {
        Ok(vec![Event::new(
            "InvoiceCreated",
            json!({"number": last + 1}),
        )])
    }
}

/// A student subscribes to a course with capacity [`CAPACITY`].
pub(crate) struct Subscribe {
    course: String,
    student: String,
}

impl Subscribe {
    pub(crate) fn new(course: usize, student: String) -> Self {
        Self {
            course: format!("c{course}"),
            student,
        }
    }
}

pub(crate) struct Course(String);

impl Projection for Course {
    /// (capacity if defined, subscribed)
    type State = (Option<u64>, u64);
    fn query(&self) -> Query {
        QueryItem::new(
            ["CourseDefined", "StudentSubscribed"],
            [P("course", self.0.clone())],
        )
        .into()
    }
    fn initial_state(&self) -> Self::State {
        (None, 0)
    }
    fn evolve(&self, state: &mut Self::State, event: &SequencedEvent) {
        if event.event.event_type() == "CourseDefined" {
            state.0 = event.event.payload()["capacity"].as_u64();
        } else {
            state.1 += 1;
        }
    }
}

pub(crate) struct StudentCourses(String);

impl Projection for StudentCourses {
    type State = Vec<String>;
    fn query(&self) -> Query {
        QueryItem::new(["StudentSubscribed"], [P("student", self.0.clone())]).into()
    }
    fn initial_state(&self) -> Vec<String> {
        Vec::new()
    }
    fn evolve(&self, state: &mut Vec<String>, event: &SequencedEvent) {
        state.extend(
            event.event.payload()["course_id"]
                .as_str()
                .map(str::to_owned),
        );
    }
}

impl Decision for Subscribe {
    const NAME: &'static str = "subscribe";
    type Projection = (Course, StudentCourses);
    type Rejection = &'static str;

    fn projection(&self) -> Self::Projection {
        (
            Course(self.course.clone()),
            StudentCourses(self.student.clone()),
        )
    }

    fn decide(
        &self,
        ((capacity, subscribed), courses): &((Option<u64>, u64), Vec<String>),
    ) -> Result<Vec<Event>, &'static str> {
        let capacity = capacity.ok_or("no such course")?;
        if courses.contains(&self.course) {
            return Err("already subscribed");
        }
        if courses.len() >= 5 {
            return Err("student holds 5 courses");
        }
        if *subscribed >= capacity {
            return Err("course full");
        }
        Ok(vec![
            Event::new(
                "StudentSubscribed",
                json!({"course_id": self.course, "student_id": self.student}),
            )
            .tagged("course", self.course.clone())
            .tagged("student", self.student.clone()),
        ])
    }
}
