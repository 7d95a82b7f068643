//! Decisions as given/when/then tests (no database), and a decision whose append condition is
//! narrower than what it reads, checked on PostgreSQL: through the store directly and through the
//! runtime with a deterministic interleaving.

#[path = "support/gate.rs"]
mod gate;

use std::sync::Arc;

use dcb_runtime::testing::{TestDatabase, given};
use dcb_runtime::{
    AppendCondition, Decision, Event, EventStore, ExecuteError, P, Projection, Query, QueryItem,
    ReadOptions, Runtime, SequencedEvent,
};
use dcb_scenarios::enrollment::{
    Course, CourseState, Refused, Student, Subscribe, course_defined, student_subscribed,
};
use gate::Gate;
use serde_json::json;

fn subscribe(course: &str, student: &str) -> Subscribe {
    Subscribe::new(course, student)
}

// ---------------------------------------------------------------------------------------------
// Enrollment (the shared scenario, `load-tests/scenarios/src/enrollment.rs`), given/when/then.

#[test]
fn no_such_course() {
    let why = given([course_defined("c2", 10)])
        .when(subscribe("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Refused::NoSuchCourse);
}

#[test]
fn course_full() {
    let why = given([
        course_defined("c1", 2),
        student_subscribed("c1", "s1"),
        student_subscribed("c1", "s2"),
    ])
    .when(subscribe("c1", "s3"))
    .then_rejected();
    assert_eq!(why, Refused::CourseFull);
}

#[test]
fn already_subscribed() {
    let why = given([course_defined("c1", 10), student_subscribed("c1", "s1")])
        .when(subscribe("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Refused::AlreadySubscribed);
}

#[test]
fn success() {
    given([course_defined("c1", 2), student_subscribed("c1", "s2")])
        .when(subscribe("c1", "s1"))
        .then([student_subscribed("c1", "s1")]);
}

/// The student's subscription to ANOTHER course is no seat taken in this one: with capacity 1,
/// the Course projection counting it would refuse with `CourseFull`.
#[test]
fn a_subscription_to_another_course_takes_no_seat() {
    given([
        course_defined("c1", 1),
        course_defined("c2", 1),
        student_subscribed("c2", "s1"),
    ])
    .when(subscribe("c1", "s1"))
    .then([student_subscribed("c1", "s1")]);
}

/// Another student's subscription to THIS course takes a seat (Course sees it) but does not make
/// this student subscribed (Student does not see it).
#[test]
fn another_students_subscription_takes_a_seat_only() {
    let why = given([course_defined("c1", 1), student_subscribed("c1", "s2")])
        .when(subscribe("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Refused::CourseFull);
    given([course_defined("c1", 2), student_subscribed("c1", "s2")])
        .when(subscribe("c1", "s1"))
        .then([student_subscribed("c1", "s1")]);
}

/// Exposes the folded state of Subscribe's two projections as an event, so the test sees exactly
/// which events each projection applied.
struct Probe {
    course: String,
    student: String,
}

impl Decision for Probe {
    const NAME: &'static str = "probe";
    type Projection = (Course, Student);
    type Rejection = ();

    fn projection(&self) -> (Course, Student) {
        (Course(self.course.clone()), Student(self.student.clone()))
    }

    fn decide(&self, (course, joined): &(CourseState, Vec<String>)) -> Result<Vec<Event>, ()> {
        Ok(vec![Event::new(
            "Probed",
            json!({
                "capacity": course.capacity,
                "course_subscriptions": course.subscribed,
                "student_courses": joined,
            }),
        )])
    }
}

#[test]
fn each_projection_sees_only_its_own_events() {
    given([
        course_defined("c1", 10),
        course_defined("c2", 20),
        // The same student, another course: Student only.
        student_subscribed("c2", "s1"),
        // Another student, the same course: Course only.
        student_subscribed("c1", "s2"),
        student_subscribed("c1", "s3"),
        // Unrelated to both.
        student_subscribed("c3", "s9"),
        // Both: the student joins this course.
        student_subscribed("c1", "s1"),
    ])
    .when(Probe {
        course: "c1".into(),
        student: "s1".into(),
    })
    .then([Event::new(
        "Probed",
        json!({
            "capacity": 10,
            "course_subscriptions": 3,
            "student_courses": ["c2", "c1"],
        }),
    )]);
}

// ---------------------------------------------------------------------------------------------
// A withdrawal: reads deposits and withdrawals (the balance), but only a concurrent withdrawal
// can invalidate it. A concurrent deposit only raises the balance it decided on.

fn deposited(account: &str, amount: i64) -> Event {
    Event::new("Deposited", json!({ "amount": amount })).tagged("account", account)
}

fn withdrawn(account: &str, amount: i64) -> Event {
    Event::new("Withdrawn", json!({ "amount": amount })).tagged("account", account)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Account(String);

impl Projection for Account {
    type State = i64;
    fn query(&self) -> Query {
        QueryItem::new(["Deposited", "Withdrawn"], [P("account", self.0.clone())]).into()
    }
    fn initial_state(&self) -> i64 {
        0
    }
    fn evolve(&self, balance: &mut i64, event: &SequencedEvent) {
        let amount = event.event.payload()["amount"].as_i64().expect("amount");
        match event.event.event_type() {
            "Deposited" => *balance += amount,
            _ => *balance -= amount,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Insufficient {
    balance: i64,
}

struct Withdraw {
    account: String,
    amount: i64,
    /// Whether the condition is narrowed to withdrawals (the point of this decision); `false`
    /// keeps the default (the read query), for contrast.
    narrow: bool,
    /// Where `decide` waits, when the test controls the interleaving.
    gate: Option<Arc<Gate>>,
}

impl Withdraw {
    fn new(account: &str, amount: i64) -> Self {
        Self {
            account: account.to_owned(),
            amount,
            narrow: true,
            gate: None,
        }
    }
}

impl Decision for Withdraw {
    const NAME: &'static str = "withdraw";
    type Projection = Account;
    type Rejection = Insufficient;

    fn projection(&self) -> Account {
        Account(self.account.clone())
    }

    fn decide(&self, balance: &i64) -> Result<Vec<Event>, Insufficient> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        if *balance < self.amount {
            return Err(Insufficient { balance: *balance });
        }
        Ok(vec![withdrawn(&self.account, self.amount)])
    }

    fn condition_query(&self, read_query: &Query) -> Query {
        if self.narrow {
            QueryItem::new(["Withdrawn"], [P("account", self.account.clone())]).into()
        } else {
            read_query.clone()
        }
    }
}

#[test]
fn withdrawal_given_when_then() {
    given([
        deposited("a", 100),
        withdrawn("a", 30),
        deposited("b", 1000),
    ])
    .when(Withdraw::new("a", 70))
    .then([withdrawn("a", 70)]);
    let why = given([
        deposited("a", 100),
        withdrawn("a", 30),
        deposited("b", 1000),
    ])
    .when(Withdraw::new("a", 71))
    .then_rejected();
    assert_eq!(why, Insufficient { balance: 70 });
}

/// The balance of `account` as stored, from SQL.
async fn stored_balance(db: &TestDatabase, account: &str) -> i64 {
    let client = db.client().await.expect("client");
    let row = client
        .query_one(
            "SELECT coalesce(sum(CASE type WHEN 'Deposited' THEN (payload->>'amount')::bigint \
             ELSE -(payload->>'amount')::bigint END), 0)::bigint FROM events \
              WHERE $1 = ANY(tags)",
            &[&format!("account:{account}")],
        )
        .await
        .expect("balance");
    row.get(0)
}

/// The semantics, step by step on the store: read, decide, a concurrent append, then the
/// conditional append with the decision's condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrower_condition_on_the_store() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    store.append(vec![deposited("a", 100)]).await.expect("seed");

    let decision = Withdraw::new("a", 30);
    let projection = decision.projection();
    let read_query = projection.query();
    let condition = decision.condition_query(&read_query);
    assert_ne!(condition, read_query, "the override is in effect");

    // Read and decide.
    let read = store
        .read(&read_query, ReadOptions::default())
        .await
        .expect("read");
    let mut balance = projection.initial_state();
    projection.fold(&mut balance, &read.events);
    assert_eq!(balance, 100);
    let events = decision.decide(&balance).expect("decide");

    // A deposit lands between the read and the append.
    store
        .append(vec![deposited("a", 50)])
        .await
        .expect("concurrent deposit");
    // With the read query as condition (the default) the deposit would be a conflict ...
    let wide = store
        .append_if(
            events.clone(),
            AppendCondition::new(read_query.clone(), read.head),
        )
        .await
        .expect_err("the deposit matches the read query");
    assert!(wide.is_condition_failed(), "{wide:?}");
    // ... with the decision's narrower condition it is not.
    store
        .append_if(events, AppendCondition::new(condition.clone(), read.head))
        .await
        .expect("a deposit does not invalidate a withdrawal");
    assert_eq!(stored_balance(&db, "a").await, 120);

    // A withdrawal landing between the read and the append does invalidate it.
    let decision = Withdraw::new("a", 100);
    let read = store
        .read(&read_query, ReadOptions::default())
        .await
        .expect("read");
    let mut balance = projection.initial_state();
    projection.fold(&mut balance, &read.events);
    assert_eq!(balance, 120);
    let events = decision.decide(&balance).expect("decide");
    store
        .append(vec![withdrawn("a", 50)])
        .await
        .expect("concurrent withdrawal");
    let narrow = store
        .append_if(events, AppendCondition::new(condition, read.head))
        .await
        .expect_err("a concurrent withdrawal is a conflict");
    assert!(narrow.is_condition_failed(), "{narrow:?}");
    // Without the condition the account would be overdrawn: 120 - 50 - 100.
    assert_eq!(stored_balance(&db, "a").await, 70);
}

/// Runs a gated withdrawal through the runtime: `concurrent` is appended after the command's read
/// and before its append. Returns the outcome and how many times `decide` ran.
async fn withdraw_with_concurrent_append(
    runtime: &Runtime,
    mut withdraw: Withdraw,
    concurrent: Event,
) -> (
    Result<dcb_runtime::Committed, ExecuteError<Insufficient>>,
    usize,
) {
    let gate = Gate::closed();
    withdraw.gate = Some(gate.clone());
    let command = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.execute(withdraw).await }
    });
    // The command has read its boundary and is deciding.
    gate.arrived(1).await;
    runtime
        .store()
        .append(vec![concurrent])
        .await
        .expect("concurrent append");
    gate.open();
    let outcome = command.await.expect("command task");
    (outcome, gate.arrivals())
}

/// The runtime uses the decision's condition: a deposit between read and append costs no retry,
/// a withdrawal makes the command decide again (and here refuse, as the balance no longer
/// covers it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narrower_condition_in_the_runtime() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    store
        .append(vec![
            deposited("a", 100),
            deposited("b", 100),
            deposited("c", 100),
        ])
        .await
        .expect("seed");
    let runtime = Runtime::builder(store)
        .actors(2)
        .start()
        .await
        .expect("runtime");

    // Narrow condition, concurrent deposit: committed on the first attempt, decided once.
    let (outcome, decides) =
        withdraw_with_concurrent_append(&runtime, Withdraw::new("a", 60), deposited("a", 50)).await;
    let committed = outcome.expect("the withdrawal commits");
    assert_eq!(committed.attempts, 1, "a deposit must not be a conflict");
    assert_eq!(decides, 1);
    assert_eq!(stored_balance(&db, "a").await, 90);

    // Contrast: the default condition (the read query), same interleaving: one conflict.
    let wide = Withdraw {
        narrow: false,
        ..Withdraw::new("b", 60)
    };
    let (outcome, decides) =
        withdraw_with_concurrent_append(&runtime, wide, deposited("b", 50)).await;
    let committed = outcome.expect("the withdrawal commits after a retry");
    assert_eq!(committed.attempts, 2, "the deposit matches the read query");
    assert_eq!(decides, 2);
    assert_eq!(stored_balance(&db, "b").await, 90);

    // Narrow condition, concurrent withdrawal: a conflict; decided again on 100 - 50 = 50, the
    // withdrawal of 80 is refused instead of overdrawing the account.
    let (outcome, decides) =
        withdraw_with_concurrent_append(&runtime, Withdraw::new("c", 80), withdrawn("c", 50)).await;
    match outcome {
        Err(ExecuteError::Rejected(why)) => assert_eq!(why, Insufficient { balance: 50 }),
        other => panic!("expected a refusal after the conflict, got {other:?}"),
    }
    assert_eq!(decides, 2);
    assert_eq!(stored_balance(&db, "c").await, 50);

    runtime.shutdown().await;
}
