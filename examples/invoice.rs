//! Gapless invoice numbers: every command decides on ONE global boundary (all `InvoiceCreated`
//! events, no tags). 64 callers ask for 2,000 numbers; the runtime decides queued commands one
//! after the other on the actor's warm state and appends each chain at once, so the hot boundary
//! costs one read and one append per chain. Numbers come out exactly 1..=2000.
//!
//! Run: `cargo run --example invoice` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use std::convert::Infallible;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Decision, Event, Projection, Query, QueryItem, Runtime, SequencedEvent};
use serde_json::json;

struct LastNumber;

impl Projection for LastNumber {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::of_types(["InvoiceCreated"]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, last: &mut u64, event: &SequencedEvent) {
        *last = (*last).max(event.event.payload()["number"].as_u64().unwrap_or(0));
    }
}

struct CreateInvoice;

impl Decision for CreateInvoice {
    const NAME: &'static str = "create_invoice";
    type Projection = LastNumber;
    type Rejection = Infallible;

    fn projection(&self) -> LastNumber {
        LastNumber
    }

    fn decide(&self, last: &u64) -> Result<Vec<Event>, Infallible> {
        Ok(vec![Event::new(
            "InvoiceCreated",
            json!({"number": last + 1}),
        )])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let runtime = Runtime::builder(db.store().await?).start().await?;
    let started = std::time::Instant::now();
    let mut callers = Vec::new();
    for _ in 0..64 {
        let runtime = runtime.clone();
        callers.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            for _ in 0..2_000 / 64 + 1 {
                let committed = runtime
                    .execute(CreateInvoice)
                    .await
                    .map_err(|e| e.to_string())?;
                numbers.extend(
                    committed
                        .events
                        .iter()
                        .filter_map(|e| e.payload()["number"].as_u64()),
                );
            }
            Ok::<_, String>(numbers)
        }));
    }
    let mut numbers = Vec::new();
    for caller in callers {
        numbers.extend(caller.await??);
    }
    let elapsed = started.elapsed();
    numbers.sort_unstable();
    let n = numbers.len() as u64;
    let gapless = numbers.iter().copied().eq(1..=n);
    println!(
        "{n} invoices in {:.2} s ({:.0}/s); numbers are 1..={n} with no gap or duplicate: {gapless}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let row = db
        .client()
        .await?
        .query_one(
            "SELECT count(*), count(DISTINCT payload->>'number'), max((payload->>'number')::bigint) \
             FROM events WHERE type = 'InvoiceCreated'",
            &[],
        )
        .await?;
    let (count, distinct, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("in the events table: {count} invoices, {distinct} distinct numbers, highest {max}");
    runtime.shutdown().await;
    if !gapless || count != distinct || count != max {
        return Err("invoice numbers are not gapless".into());
    }
    Ok(())
}
