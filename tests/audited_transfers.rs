//! A model test of concurrent audited transfers, on PostgreSQL and on `MemoryStore`: random
//! transfers from concurrent callers on several actors, each recording the balances it decided on;
//! a replay of the stored events in position order must find every transfer decided on the
//! balances just before it, no overdraft, every answer matching the store (and, on PostgreSQL,
//! SQL and `INVARIANT_SQL` agreeing). Then another writer moves money while every leaf is warm:
//! the next commands must fold its event, reading only after the head their leaves had seen.

#[path = "support/peeks.rs"]
mod peeks;
#[path = "support/recording.rs"]
mod recording;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, Position, Runtime, RuntimeBuilder, SequencedEvent,
};
use dcb_scenarios::transfer::{self, Account, INVARIANT_SQL};
use futures::future::join_all;
use peeks::{Balances, peek};
use recording::Recording;
use serde_json::json;
use stores::all_events;

// Each check on a fresh PostgreSQL database and on a fresh `MemoryStore`, the store wrapped in
// `Recording`; on PostgreSQL the check also gets the database, for SQL checks.
on_both_stores!(
    |check, store, db| {
        check(Recording::new(store), db).await;
    };
    concurrent_audited_transfers_match_a_replay_and_warm_leaves_see_other_writers,
);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    NoSuchAccount,
    Insufficient { balance: i64 },
}

/// A transfer (`dcb_scenarios::transfer`'s events) that records the balances it decided on and
/// its request number.
#[derive(Debug, Clone)]
struct AuditedTransfer {
    req: u64,
    from: String,
    to: String,
    amount: i64,
}

impl Decision for AuditedTransfer {
    const NAME: &'static str = "audited_transfer";
    type Projection = (Account, Account);
    type Rejection = Refused;

    fn projection(&self) -> (Account, Account) {
        (Account(self.from.clone()), Account(self.to.clone()))
    }

    fn decide(&self, balances: &Balances) -> Result<Vec<Event>, Refused> {
        let (Some(from), Some(to)) = *balances else {
            return Err(Refused::NoSuchAccount);
        };
        if from < self.amount {
            return Err(Refused::Insufficient { balance: from });
        }
        Ok(vec![
            Event::new(
                "MoneyTransferred",
                json!({
                    "from": self.from,
                    "to": self.to,
                    "amount": self.amount,
                    "req": self.req,
                    "seen_from": from,
                    "seen_to": to,
                }),
            )
            .tagged("account", &*self.from)
            .tagged("account", &*self.to),
        ])
    }
}

/// The store's history replayed in position order.
#[derive(Debug, Default)]
struct Audit {
    balances: BTreeMap<String, i64>,
    /// Every balance each account has had.
    history: HashMap<String, BTreeSet<i64>>,
    /// Where each audited transfer is stored, by request number.
    stored: HashMap<u64, Position>,
}

/// Replays every event: each transfer touches opened accounts, leaves its debited account at or
/// above zero, and (if audited) recorded the balances of both accounts just before it.
fn audit(events: &[SequencedEvent]) -> Audit {
    let mut a = Audit::default();
    for e in events {
        let payload = e.event.payload();
        match e.event.event_type() {
            "AccountOpened" => {
                let account = payload["account_id"].as_str().expect("account_id");
                let balance = payload["balance"].as_i64().expect("balance");
                a.balances.insert(account.to_owned(), balance);
                a.history
                    .entry(account.to_owned())
                    .or_default()
                    .insert(balance);
            }
            "MoneyTransferred" => {
                let from = payload["from"].as_str().expect("from");
                let to = payload["to"].as_str().expect("to");
                let amount = payload["amount"].as_i64().expect("amount");
                let (Some(&before_from), Some(&before_to)) =
                    (a.balances.get(from), a.balances.get(to))
                else {
                    panic!("{e:?} touches an account not opened");
                };
                if let Some(req) = payload["req"].as_u64() {
                    assert_eq!(
                        (payload["seen_from"].as_i64(), payload["seen_to"].as_i64()),
                        (Some(before_from), Some(before_to)),
                        "request {req} at {} decided on other balances than those before it",
                        e.position
                    );
                    assert!(
                        a.stored.insert(req, e.position).is_none(),
                        "request {req} stored twice"
                    );
                }
                assert!(before_from >= amount, "{e:?} overdraws {from}");
                for (account, balance) in [(from, before_from - amount), (to, before_to + amount)] {
                    a.balances.insert(account.to_owned(), balance);
                    a.history
                        .entry(account.to_owned())
                        .or_default()
                        .insert(balance);
                }
            }
            other => panic!("unexpected event type {other}"),
        }
    }
    a
}

/// Balances from SQL over the `events` table, and the transfer invariant's violations.
async fn sql_balances(db: &TestDatabase) -> (BTreeMap<String, i64>, i64) {
    let client = db.client().await.expect("client");
    let rows = client
        .query(
            "WITH moves AS ( \
               SELECT payload->>'account_id' AS account, (payload->>'balance')::bigint AS delta \
                 FROM events WHERE type = 'AccountOpened' \
               UNION ALL SELECT payload->>'from', -(payload->>'amount')::bigint \
                 FROM events WHERE type = 'MoneyTransferred' \
               UNION ALL SELECT payload->>'to', (payload->>'amount')::bigint \
                 FROM events WHERE type = 'MoneyTransferred') \
             SELECT account, sum(delta)::bigint FROM moves GROUP BY account",
            &[],
        )
        .await
        .expect("balances");
    let balances = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let violations: i64 = client
        .query_one(INVARIANT_SQL, &[])
        .await
        .expect("invariant")
        .get(0);
    (balances, violations)
}

/// The audit of the store; on PostgreSQL, SQL agrees and counts no violation.
async fn audit_store<S: EventStore>(store: &S, db: Option<&TestDatabase>) -> Audit {
    let audited = audit(&all_events(store).await);
    if let Some(db) = db {
        let (balances, violations) = sql_balances(db).await;
        assert_eq!(violations, 0, "INVARIANT_SQL");
        assert_eq!(balances, audited.balances, "SQL balances vs the replay");
    }
    audited
}

/// Peeks every ordered pair of accounts at once: each must read the audited balances.
async fn peek_all<S: EventStore + 'static>(runtime: &Runtime<S>, balances: &BTreeMap<String, i64>) {
    let pairs: Vec<(&String, &String)> = balances
        .keys()
        .flat_map(|a| {
            balances
                .keys()
                .filter(move |b| *b != a)
                .map(move |b| (a, b))
        })
        .collect();
    let read = join_all(pairs.iter().map(|(a, b)| peek(runtime, a, b))).await;
    for ((a, b), got) in pairs.iter().zip(read) {
        assert_eq!(
            got,
            (Some(balances[*a]), Some(balances[*b])),
            "peek({a}, {b})"
        );
    }
}

async fn concurrent_audited_transfers_match_a_replay_and_warm_leaves_see_other_writers<
    S: EventStore + 'static,
>(
    store: Recording<S>,
    db: Option<&TestDatabase>,
) {
    const ACCOUNTS: usize = 6;
    const OPENING: i64 = 100;
    const CLIENTS: u64 = 16;
    const PER_CLIENT: u64 = 50;
    store
        .append(transfer::accounts(ACCOUNTS, OPENING))
        .await
        .expect("open accounts");
    let runtime = RuntimeBuilder::new(store)
        .actors(4)
        .max_attempts(1_000)
        .backoff(Duration::from_micros(200), Duration::from_millis(5))
        .deadline(Duration::from_secs(30))
        .start()
        .await
        .expect("runtime");

    // Phase 1: random transfers from concurrent callers.
    let seed = fastrand::u64(..);
    let kind = std::any::type_name::<S>();
    eprintln!("{kind}: seed {seed}");
    let clients = (0..CLIENTS).map(|c| {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ c);
            let mut done = Vec::new();
            for i in 0..PER_CLIENT {
                let from = rng.usize(..ACCOUNTS);
                let to = (from + rng.usize(1..ACCOUNTS)) % ACCOUNTS;
                let command = AuditedTransfer {
                    req: c * 1_000 + i,
                    from: format!("a{from}"),
                    to: format!("a{to}"),
                    amount: rng.i64(1..=80),
                };
                let outcome = runtime.execute(command.clone()).await;
                done.push((command, outcome));
            }
            done
        })
    });
    let mut outcomes = Vec::new();
    for client in join_all(clients).await {
        outcomes.extend(client.expect("client task"));
    }

    let audited = audit_store(runtime.store(), db).await;
    let mut model: BTreeMap<String, i64> =
        (0..ACCOUNTS).map(|a| (format!("a{a}"), OPENING)).collect();
    let (mut commits, mut refusals) = (0, 0);
    for (command, outcome) in &outcomes {
        match outcome {
            Ok(c) => {
                commits += 1;
                assert!(!c.replayed && c.positions.len() == 1, "{command:?}: {c:?}");
                assert_eq!(
                    audited.stored.get(&command.req),
                    Some(&c.positions[0]),
                    "{command:?} is stored where its answer says"
                );
                *model.get_mut(&command.from).expect("from") -= command.amount;
                *model.get_mut(&command.to).expect("to") += command.amount;
            }
            Err(ExecuteError::Rejected(Refused::Insufficient { balance })) => {
                refusals += 1;
                assert!(
                    *balance < command.amount && audited.history[&command.from].contains(balance),
                    "{command:?} refused on a balance of {balance}, never {}'s: {:?}",
                    command.from,
                    audited.history[&command.from]
                );
                assert!(!audited.stored.contains_key(&command.req), "{command:?}");
            }
            Err(e) => panic!("{command:?}: {e:?}"),
        }
    }
    assert_eq!(
        audited.stored.len(),
        commits,
        "every stored transfer was answered committed"
    );
    assert_eq!(
        model, audited.balances,
        "balances from the committed answers vs the store"
    );
    let retried = outcomes
        .iter()
        .filter(|(_, o)| o.as_ref().is_ok_and(|c| c.attempts > 1))
        .count();
    eprintln!("{kind}: {commits} commits ({retried} after a conflict), {refusals} refusals");
    assert!(
        commits > 0 && refusals > 0,
        "both outcomes exercised: {commits} commits, {refusals} refusals"
    );

    // Phase 2: every actor holds every leaf warm, at one head ...
    peek_all(&runtime, &audited.balances).await;
    let head = all_events(runtime.store()).await.last().map(|e| e.position);
    // ... then another writer drains the richest account into the poorest.
    let (rich, &rich_balance) = audited
        .balances
        .iter()
        .max_by_key(|(_, b)| **b)
        .expect("accounts");
    let (poor, &poor_balance) = audited
        .balances
        .iter()
        .filter(|(a, _)| *a != rich)
        .min_by_key(|(_, b)| **b)
        .expect("accounts");
    assert!(rich_balance > 0);
    // The two accounts once more, one command at a time, in both orders. Commands spanning
    // actors gather on one while they overlap densely and spread by their own key while they
    // do not (`runtime/overlap.rs`, a moving average over about 32 arrivals), so the concurrent
    // peeks above may have run on other actors than the lone transfers below will. Enough lone
    // arrivals settle the routing (each moves the average 1/32 towards "no overlap": 100 of
    // them take it from 1 to below 1/8), so the last peeks run where the transfers will.
    for _ in 0..50 {
        for (a, b) in [(rich, poor), (poor, rich)] {
            let got = peek(&runtime, a, b).await;
            let expected = (Some(audited.balances[a]), Some(audited.balances[b]));
            assert_eq!(got, expected, "peek({a}, {b})");
        }
    }
    runtime
        .store()
        .append(vec![transfer::money_transferred(rich, poor, rich_balance)])
        .await
        .expect("the other writer's transfer");
    runtime.store().take_reads();

    // The rich account is empty now: a warm leaf still at its old balance would let this commit.
    let drained = AuditedTransfer {
        req: 1_000_000,
        from: rich.clone(),
        to: poor.clone(),
        amount: 1,
    };
    match runtime.execute(drained).await {
        Err(ExecuteError::Rejected(Refused::Insufficient { balance: 0 })) => {}
        other => panic!("{rich} was drained by another writer: {other:?}"),
    }
    // The poor account holds exactly both balances: a warm leaf at its old balance would refuse.
    let everything = AuditedTransfer {
        req: 1_000_001,
        from: poor.clone(),
        to: rich.clone(),
        amount: poor_balance + rich_balance,
    };
    let moved = runtime
        .execute(everything)
        .await
        .unwrap_or_else(|e| panic!("{poor} holds {}: {e:?}", poor_balance + rich_balance));
    assert_eq!(moved.positions.len(), 1);
    // Both read only what came after the head their warm leaves had seen (the second one's
    // leaves were read again by the first if both accounts are on one actor).
    let reads = runtime.store().take_reads();
    let next = head.map(|h| Position::new(h.get() + 1));
    assert!(
        reads.len() == 2 && reads[0] == head && (reads[1] == head || reads[1] == next),
        "reads after {reads:?}, the leaves were warm at {head:?}"
    );

    let audited = audit_store(runtime.store(), db).await;
    assert_eq!(audited.balances[rich], poor_balance + rich_balance);
    assert_eq!(audited.balances[poor], 0);
    assert!(audited.stored.contains_key(&1_000_001));
    peek_all(&runtime, &audited.balances).await;
    runtime.shutdown().await;
}
