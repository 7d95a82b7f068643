//! Gapless invoice numbers: every command decides on ONE global boundary (all `InvoiceCreated`
//! events, no tags). 64 callers ask for 2,000 numbers between them; the runtime decides queued
//! commands one after the other on the actor's warm state and appends each chain at once, so the
//! hot boundary costs one read and one append per chain. Numbers come out exactly 1..=2000, as
//! the callers received them and as counted from the `events` table with SQL.
//!
//! The decision, its event and the invariant query are the shared scenario's, in
//! `load-tests/scenarios/src/invoice.rs` (the load tests run the same ones); this file is the
//! story.
//!
//! Run: `cargo run --example invoice` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dcb_runtime::Runtime;
use dcb_runtime::testing::TestDatabase;
use dcb_scenarios::invoice::{INVARIANT_SQL, NextInvoice};

const CALLERS: usize = 64;
const INVOICES: usize = 2_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let runtime = Runtime::builder(db.store().await?).start().await?;
    let started = std::time::Instant::now();
    // The callers share the work: each takes the next ticket until INVOICES are taken.
    let tickets = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let runtime = runtime.clone();
        let tickets = tickets.clone();
        callers.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            while tickets.fetch_add(1, Ordering::Relaxed) < INVOICES {
                let committed = runtime
                    .execute(NextInvoice)
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
        "{CALLERS} callers, {n} invoices in {:.2} s ({:.0}/s); the numbers they received are \
         1..={n} with no gap or duplicate: {gapless}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*), max((payload->>'number')::bigint) \
             FROM events WHERE type = 'InvoiceCreated'",
            &[],
        )
        .await?;
    let (count, max): (i64, Option<i64>) = (row.get(0), row.get(1));
    let violations = dcb_scenarios::count(&client, INVARIANT_SQL).await?;
    println!(
        "in the events table: {count} invoices, highest number {}; duplicates and gaps: \
         {violations}",
        max.unwrap_or(0)
    );
    runtime.shutdown().await;
    if !gapless || violations != 0 {
        return Err("invoice numbers are not gapless".into());
    }
    if n != INVOICES as u64 || count != INVOICES as i64 {
        return Err(format!("{INVOICES} invoices asked, {n} received, {count} stored").into());
    }
    Ok(())
}
