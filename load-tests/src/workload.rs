//! What each scenario's callers do: the commands they send, the set-up they need and the
//! invariant checked afterwards (the decisions themselves live in `dcb-scenarios`).

use std::collections::HashMap;
use std::sync::Mutex;

use dcb_runtime::{
    Committed, Decision, EventStore, ExecuteError, P, PostgresStore, QueryItem, ReadOptions,
    Runtime, keyed_event_id,
};
use dcb_scenarios::{disjoint, enrollment, invoice, lending, transfer};
use uuid::Uuid;

use crate::keys::KeyPicker;

/// The scenarios that run through the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// Every command on its own new boundary: the no-contention baseline.
    Disjoint,
    /// Every command on one global boundary: the next gapless invoice number.
    Invoice,
    /// Students subscribe to `--keys` courses (capacity, one seat each, at most 5 courses).
    Enrollment,
    /// Readers borrow and return `--keys` books (one reader per book, 3 books per reader).
    Lending,
    /// Transfers between `--keys` accounts (no balance below zero).
    Transfer,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Disjoint => "disjoint",
            Kind::Invoice => "invoice",
            Kind::Enrollment => "enrollment",
            Kind::Lending => "lending",
            Kind::Transfer => "transfer",
        }
    }

    /// The SQL counting violations of the scenario's invariant in the `events` table.
    pub(crate) fn invariant_sql(self) -> &'static str {
        match self {
            Kind::Disjoint => disjoint::INVARIANT_SQL,
            Kind::Invoice => invoice::INVARIANT_SQL,
            Kind::Enrollment => enrollment::INVARIANT_SQL,
            Kind::Lending => lending::INVARIANT_SQL,
            Kind::Transfer => transfer::INVARIANT_SQL,
        }
    }

    /// The types of the events the scenario's commands decide (not its set-up events).
    pub(crate) fn decided_types(self) -> &'static [&'static str] {
        match self {
            Kind::Disjoint => &["ThingCreated"],
            Kind::Invoice => &["InvoiceCreated"],
            Kind::Enrollment => &["StudentSubscribed"],
            Kind::Lending => &["BookBorrowed", "BookReturned"],
            Kind::Transfer => &["MoneyTransferred"],
        }
    }

    /// The names of the decisions the scenario's commands run (their keyed event ids derive
    /// from them).
    pub(crate) fn decision_names(self) -> &'static [&'static str] {
        match self {
            Kind::Disjoint => &[disjoint::Create::NAME],
            Kind::Invoice => &[invoice::NextInvoice::NAME],
            Kind::Enrollment => &[enrollment::Subscribe::NAME],
            Kind::Lending => &[lending::Borrow::NAME, lending::Return::NAME],
            Kind::Transfer => &[transfer::Transfer::NAME],
        }
    }

    /// Appends what the scenario starts from: courses, books and readers, accounts.
    pub(crate) async fn prepare(self, store: &PostgresStore, keys: usize) -> anyhow::Result<()> {
        let events = match self {
            Kind::Disjoint | Kind::Invoice => return Ok(()),
            Kind::Enrollment => enrollment::courses(keys, COURSE_CAPACITY),
            Kind::Lending => lending::library(keys, readers(keys)),
            Kind::Transfer => transfer::accounts(keys, OPENING_BALANCE),
        };
        dcb_scenarios::append_in_chunks(store, events).await?;
        Ok(())
    }
}

/// Seats per course in `enrollment`.
pub(crate) const COURSE_CAPACITY: u64 = 10;
/// Opening balance of each account in `transfer`.
pub(crate) const OPENING_BALANCE: i64 = 1_000;

/// Readers in `lending`: as many as books, so both the one-reader-per-book and the
/// three-books-per-reader rules bite.
fn readers(books: usize) -> usize {
    books
}

/// Students in `enrollment`: twice the courses, so courses fill up (capacity) and students reach
/// their 5 courses at about the same time.
fn students(courses: usize) -> usize {
    courses * 2
}

/// How one command ended.
pub(crate) enum Outcome {
    /// With the ids of the events stored for it.
    Committed(Vec<Uuid>),
    Rejected,
    /// Counted under the `outcome` label of `dcb_commands_total`, with the error's text.
    Error(&'static str, String),
}

/// The commands of one scenario in one process.
pub(crate) struct Workload {
    kind: Kind,
    keys: KeyPicker,
    key_count: usize,
    process: usize,
    /// Commands carry idempotency keys (under `--chaos`).
    keyed: bool,
    /// `lending`: which reader this process last saw borrow each book, so that callers return
    /// books as well as borrow them (another process's loans are unknown here: their returns
    /// are refused, which is fine).
    loans: Mutex<HashMap<usize, usize>>,
}

impl Workload {
    pub(crate) fn new(
        kind: Kind,
        keys: KeyPicker,
        key_count: usize,
        process: usize,
        keyed: bool,
    ) -> Self {
        Self {
            kind,
            keys,
            key_count,
            process,
            keyed,
            loans: Mutex::new(HashMap::new()),
        }
    }

    /// Sends one command: the caller's `n`-th. With keys, also the id its event gets.
    pub(crate) async fn step(
        &self,
        runtime: &Runtime,
        rng: &mut fastrand::Rng,
        caller: usize,
        n: u64,
    ) -> (Outcome, Option<Uuid>) {
        let key = self
            .keyed
            .then(|| format!("p{}-c{caller}-{n}", self.process));
        match self.kind {
            Kind::Disjoint => {
                let id = format!("p{}-c{caller}-{n}", self.process);
                exec(runtime, disjoint::Create::new(id), key).await
            }
            Kind::Invoice => exec(runtime, invoice::NextInvoice, key).await,
            Kind::Enrollment => {
                let course = format!("c{}", self.keys.pick(rng));
                let student = format!("s{}", rng.usize(..students(self.key_count)));
                exec(runtime, enrollment::Subscribe::new(course, student), key).await
            }
            Kind::Lending => self.lend(runtime, rng, key).await,
            Kind::Transfer => {
                let (from, to) = self.keys.pick_pair(rng);
                let amount = rng.i64(1..=100);
                let transfer =
                    transfer::Transfer::new(format!("a{from}"), format!("a{to}"), amount);
                exec(runtime, transfer, key).await
            }
        }
    }

    /// Returns the book when this process saw it lent out, else borrows it for a random reader.
    async fn lend(
        &self,
        runtime: &Runtime,
        rng: &mut fastrand::Rng,
        key: Option<String>,
    ) -> (Outcome, Option<Uuid>) {
        let book = self.keys.pick(rng);
        let lent_to = self.loans.lock().expect("loans lock").get(&book).copied();
        let (reader, (result, id)) = match lent_to {
            Some(reader) => {
                let cmd = lending::Return::new(format!("b{book}"), format!("r{reader}"));
                (reader, run(runtime, cmd, key).await)
            }
            None => {
                let reader = rng.usize(..readers(self.key_count));
                let cmd = lending::Borrow::new(format!("b{book}"), format!("r{reader}"));
                (reader, run(runtime, cmd, key).await)
            }
        };
        // Lent out to a reader this process does not know of (lent by another process, or a
        // borrow whose answer was lost): learn who from the store, so the book is returned later
        // instead of being refused forever.
        let unknown_borrower =
            if let (Err(ExecuteError::Rejected(lending::Refused::LentOut)), None) =
                (&result, lent_to)
            {
                current_borrower(runtime, book).await
            } else {
                None
            };
        let mut loans = self.loans.lock().expect("loans lock");
        if let Some(borrower) = unknown_borrower {
            loans.entry(book).or_insert(borrower);
        }
        match (&result, lent_to) {
            (Ok(_), None) => {
                loans.insert(book, reader);
            }
            // Returned, or someone else's return already happened: forget this loan, unless
            // another caller has lent the book again meanwhile.
            (Ok(_) | Err(ExecuteError::Rejected(lending::Refused::NotLentToYou)), Some(_))
                if loans.get(&book) == Some(&reader) =>
            {
                loans.remove(&book);
            }
            _ => {}
        }
        (classify(result), id)
    }
}

/// The reader book `b<book>` is lent to, from its last loan event, if it is lent out.
async fn current_borrower(runtime: &Runtime, book: usize) -> Option<usize> {
    let query = QueryItem::new(
        ["BookBorrowed", "BookReturned"],
        [P("book", format!("b{book}"))],
    )
    .into();
    let last = runtime
        .store()
        .read(&query, ReadOptions::default().backwards().limit(1))
        .await
        .ok()?
        .events
        .pop()?;
    if last.event.event_type() != "BookBorrowed" {
        return None;
    }
    last.event.payload()["reader_id"]
        .as_str()?
        .strip_prefix('r')?
        .parse()
        .ok()
}

/// Executes `command`, under `key` if given; the result and, with a key, its event's id.
async fn run<D: Decision>(
    runtime: &Runtime,
    command: D,
    key: Option<String>,
) -> (Result<Committed, ExecuteError<D::Rejection>>, Option<Uuid>) {
    match key {
        None => (runtime.execute(command).await, None),
        Some(key) => {
            let id = keyed_event_id(D::NAME, &key, 0);
            (runtime.execute_with_key(key, command).await, Some(id))
        }
    }
}

async fn exec<D: Decision>(
    runtime: &Runtime,
    command: D,
    key: Option<String>,
) -> (Outcome, Option<Uuid>)
where
    D::Rejection: std::fmt::Debug,
{
    let (result, id) = run(runtime, command, key).await;
    (classify(result), id)
}

fn classify<R: std::fmt::Debug>(result: Result<Committed, ExecuteError<R>>) -> Outcome {
    match result {
        Ok(committed) => Outcome::Committed(committed.events.iter().map(|e| e.id()).collect()),
        Err(ExecuteError::Rejected(_)) => Outcome::Rejected,
        Err(e) => Outcome::Error(e.outcome().label(), error_chain(&e)),
    }
}

/// The error and its sources (a database error's own message is in its source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
