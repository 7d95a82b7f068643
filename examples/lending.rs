//! Book lending with the decision runtime: 40 readers race for 6 books, borrowing and returning
//! at random, and no book is ever lent to two readers at once nor does any reader hold more than
//! 3 books. Shows the seed's fluent filter (`Query::matching()...`) as the boundary of one
//! projection spanning a book and a reader, typed rejections, and the rules checked by replaying
//! the `events` table in position order with SQL.
//!
//! The decisions (`Borrow`, `Return`), their events and the invariant query are the shared
//! scenario's, in `load-tests/scenarios/src/lending.rs` (the load tests run the same ones); this
//! file is the story.
//!
//! Run: `cargo run --example lending` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Query, Runtime};
use dcb_scenarios::lending::{Borrow, INVARIANT_SQL, MAX_HELD, Refused, Return, library};

const BOOKS: usize = 6;
const READERS: usize = 40;
const ROUNDS: usize = 15;

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
    // Books b0..b5 and readers r0..r39.
    store.append(library(BOOKS, READERS)).await?;
    let runtime = Runtime::builder(store).start().await?;

    // The rules, one command each.
    let unknown_book = runtime.execute(Borrow::new("b99", "r0")).await;
    let unknown_reader = runtime.execute(Borrow::new("b0", "stranger")).await;
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
        runtime.execute(Borrow::new(book, "r0")).await?;
    }
    let fourth = runtime.execute(Borrow::new("b3", "r0")).await;
    let taken = runtime.execute(Borrow::new("b0", "r1")).await;
    let not_theirs = runtime.execute(Return::new("b0", "r1")).await;
    println!(
        "r0 holds b0, b1, b2; a fourth book: {fourth:?}; b0 for r1: {taken:?}; r1 returns b0: \
         {not_theirs:?}"
    );
    if !matches!(fourth, Err(ExecuteError::Rejected(Refused::TooManyBooks)))
        || !matches!(taken, Err(ExecuteError::Rejected(Refused::LentOut)))
        || !matches!(
            not_theirs,
            Err(ExecuteError::Rejected(Refused::NotLentToYou))
        )
    {
        return Err("a loan or a return that breaks a rule was not refused".into());
    }
    for book in ["b0", "b1", "b2"] {
        runtime.execute(Return::new(book, "r0")).await?;
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
                    runtime.execute(Return::new(book, &*reader)).await
                } else {
                    let book = format!("b{}", fastrand::usize(..BOOKS));
                    runtime.execute(Borrow::new(book, &*reader)).await
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

    // Replay each reader's loans in position order: the most books any reader held at once.
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE type = 'BookBorrowed'), coalesce(max(held), 0) FROM \
               (SELECT type, sum(CASE type WHEN 'BookBorrowed' THEN 1 ELSE -1 END) \
                         OVER (PARTITION BY payload->>'reader_id' ORDER BY position) AS held \
                FROM events WHERE type IN ('BookBorrowed', 'BookReturned')) running",
            &[],
        )
        .await?;
    let (borrows, most_held): (i64, i64) = (row.get(0), row.get(1));
    println!(
        "in the events table: {borrows} borrows; the most books any reader held at once: \
         {most_held} (limit {MAX_HELD})"
    );
    // Replay every book and every reader in position order: a borrow of a book lent out, a
    // return by someone other than the borrower, a reader holding more than MAX_HELD books.
    let violations = dcb_scenarios::count(&client, INVARIANT_SQL).await?;
    println!("violations counted from the events table: {violations}");
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    if violations != 0 {
        return Err("a book was lent to two readers at once, or a reader held too many".into());
    }
    if usize::try_from(borrows)? != total.borrowed + 3 {
        return Err("the store does not hold the borrows that were committed".into());
    }
    Ok(())
}
