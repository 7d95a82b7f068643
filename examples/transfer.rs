//! Money transfers with the decision runtime: 32 callers make 640 random transfers between 5
//! accounts concurrently, and no balance ever goes below zero. Shows a decision whose boundary
//! spans two entities (both accounts, read together as a pair of projections), typed rejections,
//! and every balance recomputed from the `events` table in position order with SQL: none is ever
//! negative and the total is conserved.
//!
//! The decision, its events and the invariant query are the shared scenario's, in
//! `load-tests/scenarios/src/transfer.rs` (the load tests run the same ones); this file is the
//! story.
//!
//! Run: `cargo run --example transfer` (uses `DATABASE_URL`, else the local PostgreSQL, else a
//! throwaway one; works in a scratch database that is dropped at the end).

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{EventStore, ExecuteError, Query, Runtime};
use dcb_scenarios::transfer::{INVARIANT_SQL, Refused, Transfer, accounts};

const ACCOUNTS: usize = 5;
const OPENING_BALANCE: i64 = 100;
const CALLERS: usize = 32;
const TRANSFERS_PER_CALLER: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let store = db.store().await?;
    // Accounts a0..a4.
    store.append(accounts(ACCOUNTS, OPENING_BALANCE)).await?;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|a| format!("a{a}")).collect();
    // 32 callers on 5 accounts: every transfer holds both its accounts while it runs, so no two
    // actors decide on one account at once and the default attempts are plenty.
    let runtime = Runtime::builder(store).start().await?;

    let overdraw = runtime
        .execute(Transfer::new("a0", "a1", OPENING_BALANCE + 1))
        .await;
    let unknown = runtime.execute(Transfer::new("a0", "nobody", 1)).await;
    println!("transfer more than the balance: {overdraw:?}");
    println!("transfer to an account never opened: {unknown:?}");
    if !matches!(
        overdraw,
        Err(ExecuteError::Rejected(Refused::InsufficientFunds))
    ) || !matches!(unknown, Err(ExecuteError::Rejected(Refused::NoSuchAccount)))
    {
        return Err("a transfer that breaks a rule was not refused".into());
    }

    let started = std::time::Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let runtime = runtime.clone();
        let accounts = accounts.clone();
        callers.push(tokio::spawn(async move {
            let (mut committed, mut refused) = (0, 0);
            for _ in 0..TRANSFERS_PER_CALLER {
                let from = fastrand::usize(..ACCOUNTS);
                let to = (from + fastrand::usize(1..ACCOUNTS)) % ACCOUNTS;
                let transfer =
                    Transfer::new(&*accounts[from], &*accounts[to], fastrand::i64(1..=60));
                match runtime.execute(transfer).await {
                    Ok(_) => committed += 1,
                    Err(ExecuteError::Rejected(Refused::InsufficientFunds)) => refused += 1,
                    Err(e) => return Err(format!("unexpected outcome: {e:?}")),
                }
            }
            Ok::<_, String>((committed, refused))
        }));
    }
    let (mut committed, mut refused) = (0, 0);
    for caller in callers {
        let (c, r) = caller.await??;
        committed += c;
        refused += r;
    }
    println!(
        "{} transfers in {:.2} s: {committed} committed, {refused} refused for insufficient funds",
        CALLERS * TRANSFERS_PER_CALLER,
        started.elapsed().as_secs_f64()
    );
    runtime.shutdown().await;

    // Every account's balance after each of its events, replayed in position order.
    let client = db.client().await?;
    let rows = client
        .query(
            "WITH deltas AS ( \
               SELECT position, payload->>'account_id' AS account, \
                      (payload->>'balance')::bigint AS delta \
               FROM events WHERE type = 'AccountOpened' \
               UNION ALL \
               SELECT position, payload->>'from', -(payload->>'amount')::bigint \
               FROM events WHERE type = 'MoneyTransferred' \
               UNION ALL \
               SELECT position, payload->>'to', (payload->>'amount')::bigint \
               FROM events WHERE type = 'MoneyTransferred'), \
             running AS ( \
               SELECT account, position, \
                      sum(delta) OVER (PARTITION BY account ORDER BY position) AS balance \
               FROM deltas) \
             SELECT account, count(*) - 1, min(balance)::bigint, \
                    (array_agg(balance ORDER BY position DESC))[1]::bigint \
             FROM running GROUP BY account ORDER BY account",
            &[],
        )
        .await?;
    let (mut total, mut lowest) = (0, i64::MAX);
    for row in rows {
        let (account, moves, min, balance): (String, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!("  {account}: {moves} transfers in or out, lowest balance {min}, now {balance}");
        total += balance;
        lowest = lowest.min(min);
    }
    let opened = OPENING_BALANCE * ACCOUNTS as i64;
    println!("total now {total} (opened with {opened}); lowest balance ever {lowest}");
    // The rule, replayed in position order: no transfer leaves an account below zero or touches
    // one that was not opened.
    let violations = dcb_scenarios::count(&client, INVARIANT_SQL).await?;
    println!("violations counted from the events table: {violations}");
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    if lowest < 0 || violations != 0 {
        return Err("a balance went below zero".into());
    }
    if total != opened {
        return Err("money was created or destroyed".into());
    }
    if stored.events.len() != ACCOUNTS + committed {
        return Err("the store does not hold the transfers that were committed".into());
    }
    Ok(())
}
