//! Reading two accounts' balances (`dcb_scenarios::transfer`) through the runtime, with a decision
//! that appends nothing: what a command would decide on, warm state included.
#![allow(dead_code)] // each test binary uses part of it

use dcb_runtime::{Decision, Event, EventStore, ExecuteError, Runtime};
use dcb_scenarios::transfer::Account;

/// The balances of two accounts (`None`: not opened).
pub type Balances = (Option<i64>, Option<i64>);

/// Answers the two balances it read, as a rejection: appends nothing.
pub struct Peek(pub String, pub String);

impl Peek {
    pub fn new(a: &str, b: &str) -> Self {
        Self(a.to_owned(), b.to_owned())
    }
}

impl Decision for Peek {
    const NAME: &'static str = "peek";
    type Projection = (Account, Account);
    type Rejection = Balances;

    fn projection(&self) -> (Account, Account) {
        (Account(self.0.clone()), Account(self.1.clone()))
    }

    fn decide(&self, balances: &Balances) -> Result<Vec<Event>, Balances> {
        Err(*balances)
    }
}

/// The balances of `a` and `b` as a command on `runtime` reads them.
pub async fn peek<S: EventStore + 'static>(runtime: &Runtime<S>, a: &str, b: &str) -> Balances {
    match runtime.execute(Peek::new(a, b)).await {
        Err(ExecuteError::Rejected(balances)) => balances,
        other => panic!("peek({a}, {b}): {other:?}"),
    }
}
