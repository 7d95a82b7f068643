//! Commands spanning several keys, in one process: transfers between two accounts race with
//! deposits on each of them, routed to other actors. Every command holds all its keys while it
//! runs, so none ever meets a conflict (each commits at its first append); the balances are
//! counted from the `events` table afterwards.

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{Decision, EventStore, ExecuteError, Runtime};
use dcb_scenarios::transfer::{self, Account, Refused, Transfer};

const ACCOUNTS: usize = 12;
const CALLERS: usize = 48;
const COMMANDS_EACH: usize = 30;
const OPENING: i64 = 1_000;

/// Money paid into one account from the bank: a decision on that account only (one key), routed
/// to that account's actor, while the transfers touching the account run on another.
struct Deposit {
    account: String,
    amount: i64,
}

impl Decision for Deposit {
    const NAME: &'static str = "deposit";
    type Projection = Account;
    type Rejection = Refused;

    fn projection(&self) -> Account {
        Account(self.account.clone())
    }

    fn decide(&self, balance: &Option<i64>) -> Result<Vec<dcb_runtime::Event>, Refused> {
        match balance {
            None => Err(Refused::NoSuchAccount),
            Some(_) => Ok(vec![transfer::money_transferred(
                "bank",
                &self.account,
                self.amount,
            )]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_and_deposits_on_shared_accounts_never_conflict_across_actors() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    let mut opened = transfer::accounts(ACCOUNTS, OPENING);
    opened.push(transfer::account_opened("bank", 1_000_000_000));
    store.append(opened).await.expect("open the accounts");
    let runtime = Runtime::builder(store)
        .actors(8)
        .start()
        .await
        .expect("runtime");
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(caller as u64);
                let (mut committed, mut attempts_over_one) = (0usize, Vec::new());
                for _ in 0..COMMANDS_EACH {
                    let a = format!("a{}", rng.usize(..ACCOUNTS));
                    let outcome = if rng.bool() {
                        let b = format!("a{}", rng.usize(..ACCOUNTS));
                        runtime.execute(Transfer::new(a, b, rng.i64(1..=50))).await
                    } else {
                        runtime
                            .execute(Deposit {
                                account: a,
                                amount: rng.i64(1..=50),
                            })
                            .await
                    };
                    match outcome {
                        Ok(c) => {
                            committed += 1;
                            if c.attempts != 1 {
                                attempts_over_one.push(c.attempts);
                            }
                        }
                        Err(ExecuteError::Rejected(
                            Refused::SameAccount | Refused::InsufficientFunds,
                        )) => {}
                        Err(e) => panic!("unexpected outcome: {e:?}"),
                    }
                }
                (committed, attempts_over_one)
            })
        })
        .collect();
    let mut committed = 0;
    for caller in callers {
        let (n, retried) = caller.await.expect("caller");
        assert!(
            retried.is_empty(),
            "commands met conflicts (attempts {retried:?}): two actors ran on one account at once"
        );
        committed += n;
    }
    runtime.shutdown().await;
    assert!(
        committed > CALLERS * COMMANDS_EACH / 2,
        "{committed} committed"
    );

    let client = db.client().await.expect("client");
    let violations: i64 = client
        .query_one(transfer::INVARIANT_SQL, &[])
        .await
        .expect("invariant")
        .get(0);
    assert_eq!(violations, 0, "an account went below zero");
    // One event per committed command: none stored twice, none lost.
    let moved: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'MoneyTransferred'",
            &[],
        )
        .await
        .expect("moves")
        .get(0);
    assert_eq!(usize::try_from(moved).unwrap(), committed);
}

/// A deposit that holds no key at all (a decision may say so): it runs all the same.
struct KeylessDeposit(Deposit);

impl Decision for KeylessDeposit {
    const NAME: &'static str = "keyless-deposit";
    type Projection = Account;
    type Rejection = Refused;

    fn projection(&self) -> Account {
        self.0.projection()
    }

    fn decide(&self, balance: &Option<i64>) -> Result<Vec<dcb_runtime::Event>, Refused> {
        self.0.decide(balance)
    }

    fn consistency_keys(&self, _condition_query: &dcb_runtime::Query) -> Vec<u64> {
        Vec::new()
    }
}

#[tokio::test]
async fn a_decision_without_keys_still_runs() {
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");
    store
        .append(transfer::accounts(1, OPENING))
        .await
        .expect("open the account");
    let runtime = Runtime::builder(store).start().await.expect("runtime");
    for amount in 1..=3 {
        let committed = runtime
            .execute(KeylessDeposit(Deposit {
                account: "a0".to_owned(),
                amount,
            }))
            .await
            .expect("the deposit commits");
        assert_eq!(committed.attempts, 1);
    }
    runtime.shutdown().await;
}
