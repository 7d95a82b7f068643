//! **transfer** — money moves between two accounts; no balance ever goes below zero.
//!
//! `AccountOpened {account_id, balance}` tagged `account:<id>`; `MoneyTransferred {from, to,
//! amount}` tagged `account:<from>` and `account:<to>`.

use dcb_runtime::{Decision, Event, P, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

/// Violations, replaying every account's balance in position order: events that touch an account
/// not opened before them, and events that leave an account they debit below zero (an opening
/// with a negative balance, a transfer from an overdrawn account). Each event counts once: a
/// transfer from an account never opened is one violation, and crediting an overdrawn account
/// is none.
pub const INVARIANT_SQL: &str = "\
WITH moves AS ( \
  SELECT payload->>'account_id' AS account, position, (payload->>'balance')::bigint AS delta \
    FROM events WHERE type = 'AccountOpened' \
  UNION ALL SELECT payload->>'from', position, -(payload->>'amount')::bigint \
    FROM events WHERE type = 'MoneyTransferred' \
  UNION ALL SELECT payload->>'to', position, (payload->>'amount')::bigint \
    FROM events WHERE type = 'MoneyTransferred'), \
 opened AS (SELECT payload->>'account_id' AS account, min(position) AS at \
            FROM events WHERE type = 'AccountOpened' GROUP BY 1), \
 running AS (SELECT account, position, delta, \
                    sum(delta) OVER (PARTITION BY account ORDER BY position) AS balance \
             FROM moves) \
SELECT count(DISTINCT r.position) FROM running r LEFT JOIN opened o USING (account) \
WHERE o.at IS NULL OR o.at > r.position OR (r.delta < 0 AND r.balance < 0)";

/// The event opening account `id` with `balance`.
pub fn account_opened(id: &str, balance: i64) -> Event {
    Event::new(
        "AccountOpened",
        json!({"account_id": id, "balance": balance}),
    )
    .tagged("account", id)
}

/// The event moving `amount` from account `from` to account `to`.
pub fn money_transferred(from: &str, to: &str, amount: i64) -> Event {
    Event::new(
        "MoneyTransferred",
        json!({"from": from, "to": to, "amount": amount}),
    )
    .tagged("account", from)
    .tagged("account", to)
}

/// Accounts `a0`..`a<n-1>`, each opened with `balance`.
pub fn accounts(n: usize, balance: i64) -> Vec<Event> {
    (0..n)
        .map(|a| account_opened(&format!("a{a}"), balance))
        .collect()
}

/// An account's balance, `None` until it is opened.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Account(pub String);

impl Projection for Account {
    type State = Option<i64>;
    fn query(&self) -> Query {
        QueryItem::new(
            ["AccountOpened", "MoneyTransferred"],
            [P("account", &*self.0)],
        )
        .into()
    }
    fn initial_state(&self) -> Option<i64> {
        None
    }
    fn evolve(&self, balance: &mut Option<i64>, event: &SequencedEvent) {
        let payload = event.event.payload();
        if event.event.event_type() == "AccountOpened" {
            *balance = payload["balance"].as_i64();
            return;
        }
        let amount = payload["amount"].as_i64().unwrap_or(0);
        if let Some(balance) = balance {
            if payload["from"] == self.0.as_str() {
                *balance -= amount;
            }
            if payload["to"] == self.0.as_str() {
                *balance += amount;
            }
        }
    }
}

/// Why a transfer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An account was never opened.
    NoSuchAccount,
    /// From and to are the same account.
    SameAccount,
    /// The amount is zero or negative.
    NotPositive,
    /// The balance is below the amount.
    InsufficientFunds,
}

/// Moves `amount` from one account to another.
pub struct Transfer {
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// How much.
    pub amount: i64,
}

impl Transfer {
    /// The command.
    pub fn new(from: impl Into<String>, to: impl Into<String>, amount: i64) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            amount,
        }
    }
}

impl Decision for Transfer {
    const NAME: &'static str = "transfer";
    type Projection = (Account, Account);
    type Rejection = Refused;

    fn projection(&self) -> Self::Projection {
        (Account(self.from.clone()), Account(self.to.clone()))
    }

    fn decide(&self, (from, to): &(Option<i64>, Option<i64>)) -> Result<Vec<Event>, Refused> {
        if self.from == self.to {
            return Err(Refused::SameAccount);
        }
        if self.amount <= 0 {
            return Err(Refused::NotPositive);
        }
        let (Some(balance), Some(_)) = (from, to) else {
            return Err(Refused::NoSuchAccount);
        };
        if *balance < self.amount {
            return Err(Refused::InsufficientFunds);
        }
        Ok(vec![money_transferred(&self.from, &self.to, self.amount)])
    }
}
