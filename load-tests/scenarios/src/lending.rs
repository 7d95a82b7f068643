//! **lending** — the seed's book lending: a decision whose boundary spans a book and a reader.
//!
//! `BookAdded {book_id}` tagged `book:<id>`; `ReaderRegistered {reader_id}` tagged
//! `reader:<id>`; `BookBorrowed {book_id, reader_id}` and `BookReturned {book_id, reader_id}`
//! tagged with both. Rules: a book is borrowed by at most one reader at a time (and returned only
//! by its borrower); a reader holds at most [`MAX_HELD`] books.

use std::collections::BTreeSet;

use dcb_runtime::{Decision, Event, P, Projection, Query, SequencedEvent};
use serde_json::json;

/// How many books a reader may hold at once.
pub const MAX_HELD: usize = 3;

/// Violations, replaying loans in position order: a borrow of a book already lent out, a return
/// of a book not lent to the returner, and every moment a reader held more than [`MAX_HELD`]
/// books.
pub const INVARIANT_SQL: &str = "\
WITH loans AS (SELECT position, type, payload->>'book_id' AS book, payload->>'reader_id' AS reader \
               FROM events WHERE type IN ('BookBorrowed', 'BookReturned')), \
     by_book AS (SELECT type, reader, lag(type) OVER w AS prev_type, lag(reader) OVER w AS prev_reader \
                 FROM loans WINDOW w AS (PARTITION BY book ORDER BY position)), \
     by_reader AS (SELECT sum(CASE type WHEN 'BookBorrowed' THEN 1 ELSE -1 END) \
                     OVER (PARTITION BY reader ORDER BY position) AS held FROM loans) \
SELECT (SELECT count(*) FROM by_book WHERE type = 'BookBorrowed' AND prev_type = 'BookBorrowed') \
     + (SELECT count(*) FROM by_book WHERE type = 'BookReturned' \
          AND (prev_type IS DISTINCT FROM 'BookBorrowed' OR prev_reader IS DISTINCT FROM reader)) \
     + (SELECT count(*) FROM by_reader WHERE held > 3)";

/// The event adding book `id`.
pub fn book_added(id: &str) -> Event {
    Event::new("BookAdded", json!({ "book_id": id })).tagged("book", id)
}

/// The event registering reader `id`.
pub fn reader_registered(id: &str) -> Event {
    Event::new("ReaderRegistered", json!({ "reader_id": id })).tagged("reader", id)
}

/// A `BookBorrowed` or `BookReturned` event.
pub fn loan_event(event_type: &str, book: &str, reader: &str) -> Event {
    Event::new(event_type, json!({"book_id": book, "reader_id": reader}))
        .tagged("book", book)
        .tagged("reader", reader)
}

/// Books `b0`..`b<books-1>` and readers `r0`..`r<readers-1>`.
pub fn library(books: usize, readers: usize) -> Vec<Event> {
    let books = (0..books).map(|b| book_added(&format!("b{b}")));
    let readers = (0..readers).map(|r| reader_registered(&format!("r{r}")));
    books.chain(readers).collect()
}

/// What a loan decision knows about one book and one reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoanState {
    /// The book was added.
    pub book_added: bool,
    /// The reader the book is lent to, if any.
    pub lent_to: Option<String>,
    /// The reader is registered.
    pub reader_registered: bool,
    /// The books the reader holds.
    pub held: BTreeSet<String>,
}

/// The book's events and the reader's events, read in one round trip.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Loan {
    /// The book id.
    pub book: String,
    /// The reader id.
    pub reader: String,
}

impl Projection for Loan {
    type State = LoanState;

    fn query(&self) -> Query {
        // The seed's fluent filter: events of these types tagged with the book OR with the
        // reader. `finalize` validates the lists and the tags; the type list is a non-empty
        // literal, so only an invalid id (say, longer than the tag limit) can fail it, and the
        // runtime answers a panicking projection with `ExecuteError::Panicked`.
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
        let field = |name: &str| payload[name].as_str().unwrap_or_default().to_owned();
        match e.event_type() {
            "BookAdded" if about_book => state.book_added = true,
            "ReaderRegistered" if about_reader => state.reader_registered = true,
            "BookBorrowed" => {
                if about_book {
                    state.lent_to = Some(field("reader_id"));
                }
                if about_reader {
                    state.held.insert(field("book_id"));
                }
            }
            "BookReturned" => {
                if about_book {
                    state.lent_to = None;
                }
                if about_reader {
                    state.held.remove(&field("book_id"));
                }
            }
            _ => {}
        }
    }
}

/// Why a loan or a return was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The book was never added.
    NoSuchBook,
    /// The reader never registered.
    NotRegistered,
    /// Another reader has the book.
    LentOut,
    /// The reader holds [`MAX_HELD`] books.
    TooManyBooks,
    /// A return of a book the reader does not have.
    NotLentToYou,
}

/// `reader` borrows `book`.
pub struct Borrow {
    /// The book id.
    pub book: String,
    /// The reader id.
    pub reader: String,
}

impl Borrow {
    /// The command.
    pub fn new(book: impl Into<String>, reader: impl Into<String>) -> Self {
        Self {
            book: book.into(),
            reader: reader.into(),
        }
    }
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

/// `reader` returns `book`.
pub struct Return {
    /// The book id.
    pub book: String,
    /// The reader id.
    pub reader: String,
}

impl Return {
    /// The command.
    pub fn new(book: impl Into<String>, reader: impl Into<String>) -> Self {
        Self {
            book: book.into(),
            reader: reader.into(),
        }
    }
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
