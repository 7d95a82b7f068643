//! Unique usernames with the decision runtime: 40 registrations race for 5 usernames, exactly
//! one wins each; closing an account releases its username, and a second race for it again has
//! exactly one winner. Shows a decision over a tag that is not an entity (`username:<name>`),
//! typed rejections, and the invariant checked by replaying the `events` table in position order.
//!
//! Run: `cargo run --example unique_username` (uses `DATABASE_URL`, else the local PostgreSQL,
//! else a throwaway one; works in a scratch database that is dropped at the end).

use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, P, Projection, Query, QueryItem, Runtime,
    SequencedEvent,
};
use serde_json::json;

const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const CONTENDERS: usize = 8;

/// Who holds a username now, if anyone.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Username(String);

impl Projection for Username {
    type State = Option<String>;
    fn query(&self) -> Query {
        QueryItem::new(
            ["AccountRegistered", "AccountClosed"],
            [P("username", &*self.0)],
        )
        .into()
    }
    fn initial_state(&self) -> Option<String> {
        None
    }
    fn evolve(&self, holder: &mut Option<String>, event: &SequencedEvent) {
        *holder = match event.event.event_type() {
            "AccountRegistered" => event.event.payload()["account_id"]
                .as_str()
                .map(str::to_owned),
            _ => None,
        };
    }
}

/// An account's life: never registered, open under a username, or closed.
#[derive(Debug, Clone, PartialEq)]
enum AccountState {
    Unknown,
    Open(String),
    Closed,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Account(String);

impl Projection for Account {
    type State = AccountState;
    fn query(&self) -> Query {
        QueryItem::new(
            ["AccountRegistered", "AccountClosed"],
            [P("account", &*self.0)],
        )
        .into()
    }
    fn initial_state(&self) -> AccountState {
        AccountState::Unknown
    }
    fn evolve(&self, state: &mut AccountState, event: &SequencedEvent) {
        *state = match event.event.event_type() {
            "AccountRegistered" => AccountState::Open(
                event.event.payload()["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => AccountState::Closed,
        };
    }
}

fn account_event(event_type: &str, account: &str, username: &str) -> Event {
    Event::new(
        event_type,
        json!({"account_id": account, "username": username}),
    )
    .tagged("username", username)
    .tagged("account", account)
}

#[derive(Debug)]
enum Refused {
    UsernameTaken,
    AccountExists,
    NoSuchAccount,
    AlreadyClosed,
}

struct Register {
    account: String,
    username: String,
}

impl Decision for Register {
    const NAME: &'static str = "register";
    type Projection = (Username, Account);
    type Rejection = Refused;

    fn projection(&self) -> Self::Projection {
        (
            Username(self.username.clone()),
            Account(self.account.clone()),
        )
    }

    fn decide(
        &self,
        (holder, account): &(Option<String>, AccountState),
    ) -> Result<Vec<Event>, Refused> {
        if *account != AccountState::Unknown {
            return Err(Refused::AccountExists);
        }
        if holder.is_some() {
            return Err(Refused::UsernameTaken);
        }
        Ok(vec![account_event(
            "AccountRegistered",
            &self.account,
            &self.username,
        )])
    }
}

struct Close {
    account: String,
}

impl Decision for Close {
    const NAME: &'static str = "close";
    type Projection = Account;
    type Rejection = Refused;

    fn projection(&self) -> Account {
        Account(self.account.clone())
    }

    fn decide(&self, account: &AccountState) -> Result<Vec<Event>, Refused> {
        match account {
            AccountState::Unknown => Err(Refused::NoSuchAccount),
            AccountState::Closed => Err(Refused::AlreadyClosed),
            AccountState::Open(username) => Ok(vec![account_event(
                "AccountClosed",
                &self.account,
                username,
            )]),
        }
    }
}

/// Races one registration per `(account, username)` concurrently; returns the winners.
async fn race(
    runtime: &Runtime,
    contenders: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut racers = Vec::new();
    for (account, username) in contenders {
        let runtime = runtime.clone();
        racers.push(tokio::spawn(async move {
            let outcome = runtime
                .execute(Register {
                    account: account.clone(),
                    username: username.clone(),
                })
                .await;
            (account, username, outcome)
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await? {
            (account, username, Ok(_)) => winners.push((account, username)),
            (_, _, Err(ExecuteError::Rejected(Refused::UsernameTaken))) => {}
            (_, _, Err(e)) => return Err(format!("unexpected outcome: {e:?}").into()),
        }
    }
    winners.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(winners)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let runtime = Runtime::builder(db.store().await?).start().await?;

    let contenders = (0..CONTENDERS)
        .flat_map(|n| NAMES.map(|name| (format!("acc-{name}-{n}"), name.to_owned())))
        .collect();
    let winners = race(&runtime, contenders).await?;
    println!(
        "{} registrations for {} usernames; winners:",
        CONTENDERS * NAMES.len(),
        NAMES.len()
    );
    for (account, username) in &winners {
        println!("  {username}: {account}");
    }
    if winners.len() != NAMES.len() {
        return Err("not exactly one winner per username".into());
    }

    // Closing alice's account releases the name; a second race for it has one winner again.
    let (alice, _) = winners[0].clone();
    let again = runtime
        .execute(Register {
            account: "latecomer".into(),
            username: "alice".into(),
        })
        .await;
    println!("alice while {alice} holds it: {again:?}");
    if !matches!(again, Err(ExecuteError::Rejected(Refused::UsernameTaken))) {
        return Err("a taken username was claimed again".into());
    }
    runtime
        .execute(Close {
            account: alice.clone(),
        })
        .await?;
    let twice = runtime
        .execute(Close {
            account: alice.clone(),
        })
        .await;
    println!("closed {alice}; closing it again: {twice:?}");
    let second = race(
        &runtime,
        (0..CONTENDERS)
            .map(|n| (format!("acc-alice-again-{n}"), "alice".to_owned()))
            .collect(),
    )
    .await?;
    println!(
        "second race for alice ({CONTENDERS} contenders): won by {:?}",
        second
    );
    runtime.shutdown().await;
    if second.len() != 1 {
        return Err("not exactly one winner for the released username".into());
    }

    // Replay each username in position order: a registration must follow nothing or a closing,
    // and a closing must close the account registered just before.
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE type = 'AccountRegistered' \
                                     AND prev_type = 'AccountRegistered'), \
                    count(*) FILTER (WHERE type = 'AccountClosed' AND (prev_type IS DISTINCT FROM \
                        'AccountRegistered' OR prev_account <> account)), \
                    count(*) FILTER (WHERE type = 'AccountRegistered') \
             FROM (SELECT type, payload->>'account_id' AS account, \
                          lag(type) OVER w AS prev_type, \
                          lag(payload->>'account_id') OVER w AS prev_account \
                   FROM events WHERE type IN ('AccountRegistered', 'AccountClosed') \
                   WINDOW w AS (PARTITION BY payload->>'username' ORDER BY position)) claims",
            &[],
        )
        .await?;
    let (double, bad_closes, registrations): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "in the events table: {registrations} registrations; {double} of a username already held, \
         {bad_closes} closings out of order"
    );
    let stored = db
        .store()
        .await?
        .read(&Query::all(), Default::default())
        .await?;
    println!("{} events in the store", stored.events.len());
    if double != 0 || bad_closes != 0 || registrations != NAMES.len() as i64 + 1 {
        return Err("a username was held by two accounts at once".into());
    }
    Ok(())
}
