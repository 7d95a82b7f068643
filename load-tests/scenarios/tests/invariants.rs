//! Every scenario's `INVARIANT_SQL` can fail, and counts what its documentation says.
//!
//! Each case appends a history with the store's UNCONDITIONAL `append` (nothing checks the
//! rules on the way in) to a fresh database, then runs the query: a valid history counts 0, and
//! the same history plus events breaking one rule counts exactly the violations expected.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Event, EventStore};
use dcb_scenarios::{count, disjoint, enrollment, invoice, lending, transfer};

/// Appends `history` in order (one transaction) to a fresh database and counts the violations
/// `sql` finds there.
async fn violations(sql: &str, history: Vec<Event>) -> i64 {
    let db = TestDatabase::create().await.expect("a fresh database");
    let client = db.client().await.expect("a connection");
    let appended = i64::try_from(history.len()).expect("a small history");
    if !history.is_empty() {
        let store = db.store().await.expect("a store");
        store
            .append(history)
            .await
            .expect("an unconditional append");
    }
    assert_eq!(
        count(&client, "SELECT count(*) FROM events")
            .await
            .expect("count events"),
        appended,
        "the whole history is stored"
    );
    count(&client, sql).await.expect("the invariant query runs")
}

/// `base` followed by `extra`.
fn then(base: Vec<Event>, extra: impl IntoIterator<Item = Event>) -> Vec<Event> {
    base.into_iter().chain(extra).collect()
}

#[tokio::test]
async fn every_invariant_holds_on_an_empty_store() {
    for sql in [
        disjoint::INVARIANT_SQL,
        invoice::INVARIANT_SQL,
        enrollment::INVARIANT_SQL,
        lending::INVARIANT_SQL,
        transfer::INVARIANT_SQL,
    ] {
        assert_eq!(violations(sql, Vec::new()).await, 0, "{sql}");
    }
}

// ---------------------------------------------------------------------------------------------
// disjoint: a thing is created once.

use disjoint::thing_created as thing;

fn things() -> Vec<Event> {
    (0..5).map(|t| thing(&format!("t{t}"))).collect()
}

#[tokio::test]
async fn disjoint_valid_history() {
    assert_eq!(violations(disjoint::INVARIANT_SQL, things()).await, 0);
}

#[tokio::test]
async fn disjoint_a_thing_created_twice() {
    let history = then(things(), [thing("t2")]);
    assert_eq!(violations(disjoint::INVARIANT_SQL, history).await, 1);
}

/// The query counts things created more than once, not the extra creations.
#[tokio::test]
async fn disjoint_counts_things_not_creations() {
    let thrice = then(things(), [thing("t2"), thing("t2")]);
    assert_eq!(violations(disjoint::INVARIANT_SQL, thrice).await, 1);
    let two_things_twice = then(things(), [thing("t1"), thing("t3")]);
    assert_eq!(
        violations(disjoint::INVARIANT_SQL, two_things_twice).await,
        2
    );
}

// ---------------------------------------------------------------------------------------------
// invoice: numbers are exactly 1..n, no gap, no duplicate.

fn invoices(numbers: impl IntoIterator<Item = u64>) -> Vec<Event> {
    numbers.into_iter().map(invoice::invoice_created).collect()
}

#[tokio::test]
async fn invoice_valid_history() {
    assert_eq!(violations(invoice::INVARIANT_SQL, invoices(1..=5)).await, 0);
}

#[tokio::test]
async fn invoice_a_duplicate_number() {
    let history = then(invoices(1..=5), invoices([3]));
    assert_eq!(violations(invoice::INVARIANT_SQL, history).await, 1);
    let of_the_last = then(invoices(1..=5), invoices([5]));
    assert_eq!(violations(invoice::INVARIANT_SQL, of_the_last).await, 1);
}

#[tokio::test]
async fn invoice_a_gap() {
    // 6 is missing.
    let history = then(invoices(1..=5), invoices([7]));
    assert_eq!(violations(invoice::INVARIANT_SQL, history).await, 1);
    // A gap is counted by missing number: 6 and 7.
    let wider = then(invoices(1..=5), invoices([8]));
    assert_eq!(violations(invoice::INVARIANT_SQL, wider).await, 2);
    // 1 is missing.
    assert_eq!(violations(invoice::INVARIANT_SQL, invoices(2..=5)).await, 1);
}

#[tokio::test]
async fn invoice_a_duplicate_does_not_hide_a_gap() {
    // 5 twice and 6 missing.
    let history = then(invoices(1..=5), invoices([5, 7]));
    assert_eq!(violations(invoice::INVARIANT_SQL, history).await, 2);
}

#[tokio::test]
async fn invoice_a_number_below_one() {
    let history = then(invoices(1..=5), invoices([0]));
    assert_eq!(violations(invoice::INVARIANT_SQL, history).await, 1);
}

// ---------------------------------------------------------------------------------------------
// enrollment: the course exists, is not full, the student holds it once and at most
// MAX_COURSES courses.

use enrollment::{MAX_COURSES, course_defined, student_subscribed};

/// `full` (capacity 10) with 10 students; `room` (capacity 10) with `s0`; `busy` holding
/// MAX_COURSES courses `k0`.. (capacity 10 each).
fn enrollment_history() -> Vec<Event> {
    let mut history = vec![course_defined("full", 10), course_defined("room", 10)];
    history.extend((0..10).map(|s| student_subscribed("full", &format!("s{s}"))));
    history.push(student_subscribed("room", "s0"));
    for k in 0..MAX_COURSES {
        let course = format!("k{k}");
        history.push(course_defined(&course, 10));
        history.push(student_subscribed(&course, "busy"));
    }
    history
}

#[tokio::test]
async fn enrollment_valid_history() {
    let sql = enrollment::INVARIANT_SQL;
    assert_eq!(violations(sql, enrollment_history()).await, 0);
}

#[tokio::test]
async fn enrollment_a_course_over_capacity() {
    let sql = enrollment::INVARIANT_SQL;
    let eleven = then(enrollment_history(), [student_subscribed("full", "s10")]);
    assert_eq!(violations(sql, eleven).await, 1);
    // Every subscription beyond the capacity counts.
    let twelve = then(
        enrollment_history(),
        [
            student_subscribed("full", "s10"),
            student_subscribed("full", "s11"),
        ],
    );
    assert_eq!(violations(sql, twelve).await, 2);
}

#[tokio::test]
async fn enrollment_the_same_student_twice_in_a_course() {
    let history = then(enrollment_history(), [student_subscribed("room", "s0")]);
    assert_eq!(violations(enrollment::INVARIANT_SQL, history).await, 1);
}

#[tokio::test]
async fn enrollment_a_student_in_too_many_courses() {
    let history = then(enrollment_history(), [student_subscribed("room", "busy")]);
    assert_eq!(violations(enrollment::INVARIANT_SQL, history).await, 1);
}

#[tokio::test]
async fn enrollment_a_course_never_defined() {
    let sql = enrollment::INVARIANT_SQL;
    let one = then(enrollment_history(), [student_subscribed("ghost", "s1")]);
    assert_eq!(violations(sql, one).await, 1);
    let two = then(
        enrollment_history(),
        [
            student_subscribed("ghost", "s1"),
            student_subscribed("ghost", "s2"),
        ],
    );
    assert_eq!(violations(sql, two).await, 2);
}

/// In position order: a subscription stored before its course was defined is one to a course
/// that did not exist.
#[tokio::test]
async fn enrollment_a_subscription_before_the_course_was_defined() {
    let sql = enrollment::INVARIANT_SQL;
    let before = then(
        enrollment_history(),
        [student_subscribed("late", "s1"), course_defined("late", 10)],
    );
    assert_eq!(violations(sql, before).await, 1);
    let after = then(
        enrollment_history(),
        [course_defined("late", 10), student_subscribed("late", "s1")],
    );
    assert_eq!(violations(sql, after).await, 0);
}

// ---------------------------------------------------------------------------------------------
// lending: a book is lent to one reader at a time and returned by its borrower; a reader holds
// at most MAX_HELD books.

use lending::{MAX_HELD, library, loan_event};

fn borrowed(book: &str, reader: &str) -> Event {
    loan_event("BookBorrowed", book, reader)
}

fn returned(book: &str, reader: &str) -> Event {
    loan_event("BookReturned", book, reader)
}

/// Books `b0`..`b4`, readers `r0`..`r2`. `r0` borrows MAX_HELD books `b0`.. and returns `b0`,
/// which `r1` then borrows.
fn lending_history() -> Vec<Event> {
    let mut history = library(5, 3);
    history.extend((0..MAX_HELD).map(|b| borrowed(&format!("b{b}"), "r0")));
    history.push(returned("b0", "r0"));
    history.push(borrowed("b0", "r1"));
    history
}

#[tokio::test]
async fn lending_valid_history() {
    assert_eq!(
        violations(lending::INVARIANT_SQL, lending_history()).await,
        0
    );
}

#[tokio::test]
async fn lending_a_book_borrowed_twice_without_a_return() {
    let sql = lending::INVARIANT_SQL;
    let by_another = then(lending_history(), [borrowed("b0", "r2")]);
    assert_eq!(violations(sql, by_another).await, 1);
    let by_the_same = then(lending_history(), [borrowed("b0", "r1")]);
    assert_eq!(violations(sql, by_the_same).await, 1);
}

#[tokio::test]
async fn lending_a_return_by_someone_else() {
    let history = then(lending_history(), [returned("b0", "r2")]);
    assert_eq!(violations(lending::INVARIANT_SQL, history).await, 1);
}

#[tokio::test]
async fn lending_a_return_of_a_book_not_lent() {
    let sql = lending::INVARIANT_SQL;
    let never_borrowed = then(lending_history(), [returned("b4", "r2")]);
    assert_eq!(violations(sql, never_borrowed).await, 1);
    let returned_twice = then(
        lending_history(),
        [returned("b0", "r1"), returned("b0", "r1")],
    );
    assert_eq!(violations(sql, returned_twice).await, 1);
}

#[tokio::test]
async fn lending_a_reader_holding_too_many_books() {
    let sql = lending::INVARIANT_SQL;
    // r0 holds b1, b2 (MAX_HELD - 1 books): two more make MAX_HELD + 1 at one moment.
    let four = then(
        lending_history(),
        [borrowed("b3", "r0"), borrowed("b4", "r0")],
    );
    assert_eq!(violations(sql, four).await, 1);
    // Returned in time, the same borrows are fine.
    let returned_first = then(
        lending_history(),
        [
            borrowed("b3", "r0"),
            returned("b1", "r0"),
            borrowed("b4", "r0"),
        ],
    );
    assert_eq!(violations(sql, returned_first).await, 0);
}

// ---------------------------------------------------------------------------------------------
// transfer: no balance ever goes below zero, in position order; transfers touch opened accounts.

use transfer::{account_opened, money_transferred as transferred};

/// `a0` and `a1` opened with 10, `a2` with 0; `a0` is drained to exactly 0 and money goes round.
fn transfer_history() -> Vec<Event> {
    vec![
        account_opened("a0", 10),
        account_opened("a1", 10),
        account_opened("a2", 0),
        transferred("a0", "a1", 10),
        transferred("a1", "a2", 5),
        transferred("a2", "a0", 5),
    ]
}

#[tokio::test]
async fn transfer_valid_history() {
    assert_eq!(
        violations(transfer::INVARIANT_SQL, transfer_history()).await,
        0
    );
}

/// The same two transfers, in the two orders: the balances end the same, but in one order `a0`
/// is overdrawn in between.
#[tokio::test]
async fn transfer_an_overdraft_in_position_order() {
    let sql = transfer::INVARIANT_SQL;
    let overdrawn_first = then(
        transfer_history(),
        [transferred("a0", "a1", 8), transferred("a1", "a0", 5)],
    );
    assert_eq!(violations(sql, overdrawn_first).await, 1);
    let credited_first = then(
        transfer_history(),
        [transferred("a1", "a0", 5), transferred("a0", "a1", 8)],
    );
    assert_eq!(violations(sql, credited_first).await, 0);
}

/// One overdraft is one violation, however long the account stays below zero; each further
/// debit of an overdrawn account is another.
#[tokio::test]
async fn transfer_counts_overdrawing_transfers() {
    let sql = transfer::INVARIANT_SQL;
    // a0 holds 5: to -3, then credited to -1.
    let credited_but_still_below = then(
        transfer_history(),
        [transferred("a0", "a1", 8), transferred("a1", "a0", 2)],
    );
    assert_eq!(violations(sql, credited_but_still_below).await, 1);
    let debited_again = then(
        transfer_history(),
        [transferred("a0", "a1", 8), transferred("a0", "a2", 1)],
    );
    assert_eq!(violations(sql, debited_again).await, 2);
}

#[tokio::test]
async fn transfer_an_account_never_opened() {
    let sql = transfer::INVARIANT_SQL;
    let from_it = then(transfer_history(), [transferred("ghost", "a0", 5)]);
    assert_eq!(violations(sql, from_it).await, 1);
    let to_it = then(transfer_history(), [transferred("a0", "ghost", 5)]);
    assert_eq!(violations(sql, to_it).await, 1);
}

/// In position order: a transfer stored before its account was opened.
#[tokio::test]
async fn transfer_before_the_account_was_opened() {
    let sql = transfer::INVARIANT_SQL;
    let before = then(
        transfer_history(),
        [transferred("a1", "late", 5), account_opened("late", 0)],
    );
    assert_eq!(violations(sql, before).await, 1);
    let after = then(
        transfer_history(),
        [account_opened("late", 0), transferred("a1", "late", 5)],
    );
    assert_eq!(violations(sql, after).await, 0);
}

#[tokio::test]
async fn transfer_an_account_opened_below_zero() {
    let history = then(transfer_history(), [account_opened("a3", -1)]);
    assert_eq!(violations(transfer::INVARIANT_SQL, history).await, 1);
}
