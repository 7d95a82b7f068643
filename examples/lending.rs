//! Book lending with the decision runtime: 40 readers race for 6 books, borrowing and returning
//! at random, and no book is ever lent to two readers at once nor does any reader hold more than
//! 3 books. Shows the seed's fluent filter (`Query::matching()...`) as the boundary of one
//! projection spanning a book and a reader, typed rejections, and both invariants checked by
//! replaying the `events` table in position order with SQL.
//!
//! Run: `cargo run --example lending` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use std::collections::BTreeSet;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Decision, Event, EventStore, ExecuteError, P, Projection, Query, Runtime};
use dcb_runtime::{SequencedEvent, Tag};
use serde_json::json;

const BOOKS: usize = 6;
const READERS: usize = 40;
const ROUNDS: usize = 15;
const MAX_HELD: usize = 3;

/// What a loan decision needs to know about one book and one reader.
#[derive(Debug, Clone, Default)]
struct LoanState {
    book_added: bool,
    /// The reader the book is lent to, if any.
    lent_to: Option<String>,
    reader_registered: bool,
    /// The books the reader holds.
    held: BTreeSet<String>,
}

/// The book's events and the reader's events, read in one round trip.
struct Loan {
    book: String,
    reader: String,
}

impl Projection for Loan {
    type State = LoanState;

    fn query(&self) -> Query {
        // The seed's fluent filter: events of these types tagged with the book OR with the
        // reader (one query item per predicate). `finalize` validates the lists and the tags and
        // returns a Result; `query` must return a Query. The type list is a non-empty literal and
        // the tags (`book:<id>`, `reader:<id>`) are built from our own short ids, the same ones the
        // events are appended with, so this filter is valid and `expect` cannot fire.
        Query::matching()
            .any_event_type_of([
                "BookAdded",
                "ReaderRegistered",
                "BookBorrowed",
                "BookReturned",
            ])
            .and_any_predicate_of([P("book", &*self.book), P("reader", &*self.reader)])
            .finalize()
            .expect("a non-empty filter over valid tags")
    }

    fn initial_state(&self) -> LoanState {
        LoanState::default()
    }

    fn evolve(&self, state: &mut LoanState, event: &SequencedEvent) {
        let e = &event.event;
        let about_book = e.tags().contains(&P("book", &*self.book));
        let about_reader = e.tags().contains(&P("reader", &*self.reader));
        let payload = e.payload();
        let (book, reader) = (
            payload["book_id"].as_str().unwrap_or_default().to_owned(),
            payload["reader_id"].as_str().unwrap_or_default().to_owned(),
        );
        match e.event_type() {
            "BookAdded" if about_book => state.book_added = true,
            "ReaderRegistered" if about_reader => state.reader_registered = true,
            "BookBorrowed" => {
                if about_book {
                    state.lent_to = Some(reader);
                }
                if about_reader {
                    state.held.insert(book);
                }
            }
            "BookReturned" => {
                if about_book {
                    state.lent_to = None;
                }
                if about_reader {
                    state.held.remove(&book);
                }
            }
            _ => {}
        }
    }
}

fn loan_event(event_type: &str, book: &str, reader: &str) -> Event {
    Event::new(event_type, json!({"book_id": book, "reader_id": reader}))
        .with_tag(Tag::new("book", book))
        .with_tag(Tag::new("reader", reader))
}

#[derive(Debug, PartialEq)]
enum Refused {
    NoSuchBook,
    NotRegistered,
    LentOut,
    TooManyBooks,
    NotLentToYou,
}

struct Borrow {
    book: String,
    reader: String,
}

impl Decision for Borrow {
    const NAME: &'static str = "borrow";
    type Projection = Loan;
    type Rejection = Refused;

    fn projection(&self) -> Loan {
        Loan {
            book: self.book.clone(),
            reader: self.reader.clone(),
        }
    }

    fn decide(&self, state: &LoanState) -> Result<Vec<Event>, Refused> {
        if !state.book_added {
            return Err(Refused::NoSuchBook);
        }
        if !state.reader_registered {
            return Err(Refused::NotRegistered);
        }
        if state.lent_to.is_some() {
            return Err(Refused::LentOut);
        }
        if state.held.len() >= MAX_HELD {
            return Err(Refused::TooManyBooks);
        }
        Ok(vec![loan_event("BookBorrowed", &self.book, &self.reader)])
    }
}

struct Return {
    book: String,
    reader: String,
}

impl Decision for Return {
    const NAME: &'static str = "return";
    type Projection = Loan;
    type Rejection = Refused;

    fn projection(&self) -> Loan {
        Loan {
            book: self.book.clone(),
            reader: self.reader.clone(),
        }
    }

    fn decide(&self, state: &LoanState) -> Result<Vec<Event>, Refused> {
        if state.lent_to.as_deref() != Some(&*self.reader) {
            return Err(Refused::NotLentToYou);
        }
        Ok(vec![loan_event("BookReturned", &self.book, &self.reader)])
    }
}

#[derive(Debug, Default)]
struct Tally {
    borrowed: usize,
    returned: usize,
    lent_out: usize,
    too_many: usize,
    not_yours: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    let mut setup = Vec::new();
    for b in 0..BOOKS {
        let book = format!("b{b}");
        setup.push(Event::new("BookAdded", json!({"book_id": book})).tagged("book", &*book));
    }
    for r in 0..READERS {
        let reader = format!("r{r}");
        setup.push(
            Event::new("ReaderRegistered", json!({"reader_id": reader})).tagged("reader", &*reader),
        );
    }
    store.append(setup).await?;
    let runtime = Runtime::builder(store).start().await?;

    // The rules, one command each.
    let borrow = |book: &str, reader: &str| Borrow {
        book: book.into(),
        reader: reader.into(),
    };
    let unknown_book = runtime.execute(borrow("b99", "r0")).await;
    let unknown_reader = runtime.execute(borrow("b0", "stranger")).await;
    println!("borrow a book never added: {unknown_book:?}");
    println!("borrow by an unregistered reader: {unknown_reader:?}");
    if !matches!(
        unknown_book,
        Err(ExecuteError::Rejected(Refused::NoSuchBook))
    ) || !matches!(
        unknown_reader,
        Err(ExecuteError::Rejected(Refused::NotRegistered))
    ) {
        return Err("a borrow that breaks a rule was not refused".into());
    }
    for book in ["b0", "b1", "b2"] {
        runtime.execute(borrow(book, "r0")).await?;
    }
    let fourth = runtime.execute(borrow("b3", "r0")).await;
    let taken = runtime.execute(borrow("b0", "r1")).await;
    println!("r0 holds b0, b1, b2; a fourth book: {fourth:?}; b0 for r1: {taken:?}");
    if !matches!(fourth, Err(ExecuteError::Rejected(Refused::TooManyBooks)))
        || !matches!(taken, Err(ExecuteError::Rejected(Refused::LentOut)))
    {
        return Err("a borrow that breaks a rule was not refused".into());
    }
    for book in ["b0", "b1", "b2"] {
        runtime
            .execute(Return {
                book: book.into(),
                reader: "r0".into(),
            })
            .await?;
    }

    // The race: every reader, concurrently, each round either returns one of the books it holds
    // (half of the time, when it holds any) or tries to borrow a random book.
    let mut racers = Vec::new();
    for r in 0..READERS {
        let runtime = runtime.clone();
        racers.push(tokio::spawn(async move {
            let reader = format!("r{r}");
            let mut held: Vec<String> = Vec::new();
            let mut tally = Tally::default();
            for _ in 0..ROUNDS {
                let outcome = if !held.is_empty() && fastrand::bool() {
                    let book = held.swap_remove(fastrand::usize(..held.len()));
                    runtime
                        .execute(Return {
                            book,
                            reader: reader.clone(),
                        })
                        .await
                } else {
                    let book = format!("b{}", fastrand::usize(..BOOKS));
                    runtime
                        .execute(Borrow {
                            book,
                            reader: reader.clone(),
                        })
                        .await
                };
                match outcome {
                    Ok(c) if c.events[0].event_type() == "BookBorrowed" => {
                        tally.borrowed += 1;
                        held.extend(c.events[0].payload()["book_id"].as_str().map(str::to_owned));
                    }
                    Ok(_) => tally.returned += 1,
                    Err(ExecuteError::Rejected(Refused::LentOut)) => tally.lent_out += 1,
                    Err(ExecuteError::Rejected(Refused::TooManyBooks)) => tally.too_many += 1,
                    Err(ExecuteError::Rejected(Refused::NotLentToYou)) => tally.not_yours += 1,
                    Err(e) => return Err(format!("unexpected outcome: {e:?}")),
                }
            }
            Ok(tally)
        }));
    }
    let mut total = Tally::default();
    for racer in racers {
        let t = racer.await??;
        total.borrowed += t.borrowed;
        total.returned += t.returned;
        total.lent_out += t.lent_out;
        total.too_many += t.too_many;
        total.not_yours += t.not_yours;
    }
    println!(
        "{READERS} readers x {ROUNDS} rounds over {BOOKS} books: {} borrowed, {} returned; refused: \
         {} lent out, {} too many books, {} returns of a book not held",
        total.borrowed, total.returned, total.lent_out, total.too_many, total.not_yours
    );
    runtime.shutdown().await;

    // Replay each book's loans in position order: a borrow must follow a return (or nothing), and
    // a return must follow a borrow by the same reader.
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE type = 'BookBorrowed' AND prev_type = 'BookBorrowed'), \
                    count(*) FILTER (WHERE type = 'BookReturned' AND (prev_type IS DISTINCT FROM \
                        'BookBorrowed' OR prev_reader <> reader)), \
                    count(*) FILTER (WHERE type = 'BookBorrowed') \
             FROM (SELECT type, payload->>'reader_id' AS reader, \
                          lag(type) OVER w AS prev_type, \
                          lag(payload->>'reader_id') OVER w AS prev_reader \
                   FROM events WHERE type IN ('BookBorrowed', 'BookReturned') \
                   WINDOW w AS (PARTITION BY payload->>'book_id' ORDER BY position)) loans",
            &[],
        )
        .await?;
    let (double_lent, bad_returns, borrows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "in the events table: {borrows} borrows; {double_lent} of a book already lent out, \
         {bad_returns} returns of a book not lent to the returner"
    );
    // Replay each reader's loans in position order: the running count of books held.
    let row = client
        .query_one(
            "SELECT coalesce(max(held), 0) FROM \
               (SELECT sum(CASE type WHEN 'BookBorrowed' THEN 1 ELSE -1 END) \
                         OVER (PARTITION BY payload->>'reader_id' ORDER BY position) AS held \
                FROM events WHERE type IN ('BookBorrowed', 'BookReturned')) running",
            &[],
        )
        .await?;
    let most_held: i64 = row.get(0);
    println!("most books any reader ever held at once: {most_held} (limit {MAX_HELD})");
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    if double_lent != 0 || bad_returns != 0 {
        return Err("a book was lent to two readers at once".into());
    }
    if most_held > MAX_HELD as i64 {
        return Err("a reader held more than 3 books".into());
    }
    if usize::try_from(borrows)? != total.borrowed + 3 {
        return Err("the store does not hold the borrows that were committed".into());
    }
    Ok(())
}
