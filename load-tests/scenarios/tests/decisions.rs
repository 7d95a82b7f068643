//! The scenarios' decisions as given/when/then tests (no database): every rule refuses, and the
//! command that keeps the rules produces the event the invariants expect.

use dcb_runtime::testing::given;
use dcb_runtime::{Event, Tag};
use dcb_scenarios::{disjoint, enrollment, invoice, lending, transfer};
use serde_json::{Value, json};

/// An event's type, tags and payload.
fn shape(event: &Event) -> (&str, Vec<String>, &Value) {
    let tags = event.tags().iter().map(Tag::to_string).collect();
    (event.event_type(), tags, event.payload())
}

/// The event constructors (which the decisions use) build the shapes of the contract that the
/// `INVARIANT_SQL` queries and external checkers read.
#[test]
fn events_have_the_contract_shapes() {
    let cases = [
        (
            disjoint::thing_created("t1"),
            "ThingCreated",
            vec!["thing:t1"],
            json!({}),
        ),
        (
            invoice::invoice_created(7),
            "InvoiceCreated",
            vec![],
            json!({"number": 7}),
        ),
        (
            enrollment::course_defined("c1", 10),
            "CourseDefined",
            vec!["course:c1"],
            json!({"course_id": "c1", "capacity": 10}),
        ),
        (
            enrollment::student_subscribed("c1", "s1"),
            "StudentSubscribed",
            vec!["course:c1", "student:s1"],
            json!({"course_id": "c1", "student_id": "s1"}),
        ),
        (
            lending::book_added("b1"),
            "BookAdded",
            vec!["book:b1"],
            json!({"book_id": "b1"}),
        ),
        (
            lending::reader_registered("r1"),
            "ReaderRegistered",
            vec!["reader:r1"],
            json!({"reader_id": "r1"}),
        ),
        (
            lending::loan_event("BookBorrowed", "b1", "r1"),
            "BookBorrowed",
            vec!["book:b1", "reader:r1"],
            json!({"book_id": "b1", "reader_id": "r1"}),
        ),
        (
            lending::loan_event("BookReturned", "b1", "r1"),
            "BookReturned",
            vec!["book:b1", "reader:r1"],
            json!({"book_id": "b1", "reader_id": "r1"}),
        ),
        (
            transfer::account_opened("a1", 10),
            "AccountOpened",
            vec!["account:a1"],
            json!({"account_id": "a1", "balance": 10}),
        ),
        (
            transfer::money_transferred("a1", "a2", 5),
            "MoneyTransferred",
            vec!["account:a1", "account:a2"],
            json!({"from": "a1", "to": "a2", "amount": 5}),
        ),
    ];
    for (event, event_type, tags, payload) in cases {
        let tags: Vec<String> = tags.into_iter().map(str::to_owned).collect();
        assert_eq!(shape(&event), (event_type, tags, &payload));
    }
}

// ---------------------------------------------------------------------------------------------
// disjoint

#[test]
fn disjoint_creates_a_new_thing() {
    given([disjoint_created("t2")])
        .when(disjoint::Create::new("t1"))
        .then([disjoint_created("t1")]);
}

#[test]
fn disjoint_refuses_a_second_creation() {
    let why = given([disjoint_created("t1")])
        .when(disjoint::Create::new("t1"))
        .then_rejected();
    assert_eq!(why, disjoint::AlreadyExists);
}

use disjoint::thing_created as disjoint_created;

// ---------------------------------------------------------------------------------------------
// invoice (no rejection: the rule is the next number)

#[test]
fn invoice_the_first_is_one() {
    given([])
        .when(invoice::NextInvoice)
        .then([invoice::invoice_created(1)]);
}

#[test]
fn invoice_follows_the_highest_number() {
    given([3, 1, 2].map(invoice::invoice_created))
        .when(invoice::NextInvoice)
        .then([invoice::invoice_created(4)]);
}

// ---------------------------------------------------------------------------------------------
// enrollment

use enrollment::{
    MAX_COURSES, Refused as Enrollment, Subscribe, course_defined, student_subscribed,
};

#[test]
fn enrollment_subscribes() {
    given([course_defined("c1", 2), student_subscribed("c1", "s2")])
        .when(Subscribe::new("c1", "s1"))
        .then([student_subscribed("c1", "s1")]);
}

#[test]
fn enrollment_refuses_a_course_never_defined() {
    let why = given([course_defined("c2", 10)])
        .when(Subscribe::new("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Enrollment::NoSuchCourse);
}

#[test]
fn enrollment_refuses_a_full_course() {
    let why = given([
        course_defined("c1", 2),
        student_subscribed("c1", "s2"),
        student_subscribed("c1", "s3"),
    ])
    .when(Subscribe::new("c1", "s1"))
    .then_rejected();
    assert_eq!(why, Enrollment::CourseFull);
}

#[test]
fn enrollment_refuses_a_second_subscription() {
    let why = given([course_defined("c1", 10), student_subscribed("c1", "s1")])
        .when(Subscribe::new("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Enrollment::AlreadySubscribed);
}

/// `s1` holds `held` courses `k0`..; `c1` has room.
fn student_holding(held: usize) -> Vec<Event> {
    let mut history = vec![course_defined("c1", 10)];
    for k in 0..held {
        let course = format!("k{k}");
        history.push(course_defined(&course, 10));
        history.push(student_subscribed(&course, "s1"));
    }
    history
}

#[test]
fn enrollment_refuses_a_course_beyond_the_limit() {
    let why = given(student_holding(MAX_COURSES))
        .when(Subscribe::new("c1", "s1"))
        .then_rejected();
    assert_eq!(why, Enrollment::TooManyCourses);
    given(student_holding(MAX_COURSES - 1))
        .when(Subscribe::new("c1", "s1"))
        .then([student_subscribed("c1", "s1")]);
}

// ---------------------------------------------------------------------------------------------
// lending

use lending::{Borrow, MAX_HELD, Refused as Lending, Return, library, loan_event};

fn borrowed(book: &str, reader: &str) -> Event {
    loan_event("BookBorrowed", book, reader)
}

fn returned(book: &str, reader: &str) -> Event {
    loan_event("BookReturned", book, reader)
}

#[test]
fn lending_borrows_and_returns() {
    given(library(2, 2))
        .when(Borrow::new("b0", "r0"))
        .then([borrowed("b0", "r0")]);
    given([library(2, 2), vec![borrowed("b0", "r0")]].concat())
        .when(Return::new("b0", "r0"))
        .then([returned("b0", "r0")]);
    // Returned, the book can be lent again.
    given(
        [
            library(2, 2),
            vec![borrowed("b0", "r0"), returned("b0", "r0")],
        ]
        .concat(),
    )
    .when(Borrow::new("b0", "r1"))
    .then([borrowed("b0", "r1")]);
}

#[test]
fn lending_refuses_a_book_never_added() {
    let why = given(library(2, 2))
        .when(Borrow::new("b9", "r0"))
        .then_rejected();
    assert_eq!(why, Lending::NoSuchBook);
}

#[test]
fn lending_refuses_a_reader_never_registered() {
    let why = given(library(2, 2))
        .when(Borrow::new("b0", "r9"))
        .then_rejected();
    assert_eq!(why, Lending::NotRegistered);
}

#[test]
fn lending_refuses_a_book_lent_out() {
    let history = [library(2, 2), vec![borrowed("b0", "r1")]].concat();
    let why = given(history.clone())
        .when(Borrow::new("b0", "r0"))
        .then_rejected();
    assert_eq!(why, Lending::LentOut);
    // Also to the reader who has it.
    let why = given(history).when(Borrow::new("b0", "r1")).then_rejected();
    assert_eq!(why, Lending::LentOut);
}

#[test]
fn lending_refuses_a_book_beyond_the_limit() {
    let mut history = library(MAX_HELD + 1, 1);
    history.extend((0..MAX_HELD).map(|b| borrowed(&format!("b{b}"), "r0")));
    let why = given(history.clone())
        .when(Borrow::new(format!("b{MAX_HELD}"), "r0"))
        .then_rejected();
    assert_eq!(why, Lending::TooManyBooks);
    // One returned, one more may be borrowed.
    history.push(returned("b0", "r0"));
    given(history)
        .when(Borrow::new(format!("b{MAX_HELD}"), "r0"))
        .then([borrowed(&format!("b{MAX_HELD}"), "r0")]);
}

#[test]
fn lending_refuses_a_return_by_someone_else() {
    let why = given([library(2, 2), vec![borrowed("b0", "r1")]].concat())
        .when(Return::new("b0", "r0"))
        .then_rejected();
    assert_eq!(why, Lending::NotLentToYou);
}

#[test]
fn lending_refuses_a_return_of_a_book_not_lent() {
    let why = given(library(2, 2))
        .when(Return::new("b0", "r0"))
        .then_rejected();
    assert_eq!(why, Lending::NotLentToYou);
    let why = given(
        [
            library(2, 2),
            vec![borrowed("b0", "r0"), returned("b0", "r0")],
        ]
        .concat(),
    )
    .when(Return::new("b0", "r0"))
    .then_rejected();
    assert_eq!(why, Lending::NotLentToYou);
}

// ---------------------------------------------------------------------------------------------
// transfer

use transfer::{Refused as Transfers, Transfer, account_opened, money_transferred as transferred};

fn two_accounts() -> Vec<Event> {
    vec![account_opened("a0", 10), account_opened("a1", 10)]
}

#[test]
fn transfer_moves_the_whole_balance() {
    given(two_accounts())
        .when(Transfer::new("a0", "a1", 10))
        .then([transferred("a0", "a1", 10)]);
}

#[test]
fn transfer_counts_money_received() {
    // a0 received 5 from a1: 15 can leave it.
    given([two_accounts(), vec![transferred("a1", "a0", 5)]].concat())
        .when(Transfer::new("a0", "a1", 15))
        .then([transferred("a0", "a1", 15)]);
}

#[test]
fn transfer_refuses_insufficient_funds() {
    let why = given(two_accounts())
        .when(Transfer::new("a0", "a1", 11))
        .then_rejected();
    assert_eq!(why, Transfers::InsufficientFunds);
    // Money sent away is gone: a0 holds 4.
    let why = given([two_accounts(), vec![transferred("a0", "a1", 6)]].concat())
        .when(Transfer::new("a0", "a1", 5))
        .then_rejected();
    assert_eq!(why, Transfers::InsufficientFunds);
}

#[test]
fn transfer_refuses_an_account_never_opened() {
    let why = given(two_accounts())
        .when(Transfer::new("ghost", "a1", 1))
        .then_rejected();
    assert_eq!(why, Transfers::NoSuchAccount);
    let why = given(two_accounts())
        .when(Transfer::new("a0", "ghost", 1))
        .then_rejected();
    assert_eq!(why, Transfers::NoSuchAccount);
}

#[test]
fn transfer_refuses_the_same_account() {
    let why = given(two_accounts())
        .when(Transfer::new("a0", "a0", 1))
        .then_rejected();
    assert_eq!(why, Transfers::SameAccount);
}

#[test]
fn transfer_refuses_an_amount_not_positive() {
    for amount in [0, -5] {
        let why = given(two_accounts())
            .when(Transfer::new("a0", "a1", amount))
            .then_rejected();
        assert_eq!(why, Transfers::NotPositive, "amount {amount}");
    }
}
