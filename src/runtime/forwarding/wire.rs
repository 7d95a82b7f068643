//! What forwarding sends between processes: requests (a command to run) and answers (how it
//! ended), as JSON, packed many to a line.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event::{Event, Position, Tag};
use crate::runtime::Committed;

/// The longest packet (a line): a bound on what a peer may make this process read at once. A
/// command or an answer larger than this is not forwarded (its sender runs it itself).
pub(super) const MAX_PAYLOAD: usize = 256 * 1024;

/// A command for the owner of its key to run.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    /// The sender's number for it, repeated in the answer.
    pub(super) id: u64,
    /// [`crate::Decision::NAME`].
    pub(super) decision: String,
    /// Its consistency key (the owner keeps the key's lease fresh while it serves it).
    pub(super) key: u64,
    /// The idempotency key it runs under, wherever it runs.
    pub(super) idempotency_key: String,
    /// The decision, serialised.
    pub(super) command: Value,
    /// Milliseconds the owner has to decide it ([`super::OWNER_BUDGET`] at most); a job not
    /// decided by then expires there undecided.
    pub(super) budget_ms: u64,
}

/// How a forwarded command ended.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Answer {
    pub(super) id: u64,
    /// `None`: not committed there (rejected, failed, not known to the owner): the sender runs it
    /// itself, under the same idempotency key.
    pub(super) committed: Option<WireCommitted>,
}

/// A packet: requests or answers (written by [`pack`], item by item).
#[derive(Debug, Deserialize)]
pub(super) enum Envelope {
    Requests(Vec<Request>),
    Answers(Vec<Answer>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireCommitted {
    positions: Vec<i64>,
    events: Vec<WireEvent>,
    attempts: u32,
    replayed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireEvent {
    id: Uuid,
    event_type: String,
    tags: Vec<(String, String)>,
    payload: Value,
}

impl From<&Committed> for WireCommitted {
    fn from(c: &Committed) -> Self {
        Self {
            positions: c.positions.iter().map(|p| p.get()).collect(),
            events: c
                .events
                .iter()
                .map(|e| WireEvent {
                    id: e.id(),
                    event_type: e.event_type().to_owned(),
                    tags: e
                        .tags()
                        .iter()
                        .map(|t| (t.key().to_owned(), t.value().to_owned()))
                        .collect(),
                    payload: e.payload().clone(),
                })
                .collect(),
            attempts: c.attempts,
            replayed: c.replayed,
        }
    }
}

impl From<WireCommitted> for Committed {
    fn from(w: WireCommitted) -> Self {
        Self {
            positions: w.positions.into_iter().map(Position::new).collect(),
            events: w
                .events
                .into_iter()
                .map(|e| {
                    e.tags.into_iter().fold(
                        Event::new(e.event_type, e.payload).with_id(e.id),
                        |event, (k, v)| event.with_tag(Tag::new(k, v)),
                    )
                })
                .collect(),
            attempts: w.attempts,
            replayed: w.replayed,
        }
    }
}

/// Packs `items` (each a JSON value serialised alone) into as few payloads below
/// [`MAX_PAYLOAD`] as they fit in, in order: `{"Requests":[..]}` or `{"Answers":[..]}`. An item
/// too large for any payload is dropped (its sender times out and runs it itself); senders
/// check sizes before they send, so this does not happen.
pub(super) fn pack(kind: &str, items: &[String]) -> Vec<String> {
    let open = format!("{{\"{kind}\":[");
    let close = "]}";
    let mut payloads = Vec::new();
    let mut current = open.clone();
    for item in items {
        if open.len() + item.len() + close.len() > MAX_PAYLOAD {
            continue;
        }
        let separator = usize::from(current.len() > open.len());
        if current.len() + separator + item.len() + close.len() > MAX_PAYLOAD {
            current.push_str(close);
            payloads.push(std::mem::replace(&mut current, open.clone()));
        }
        if current.len() > open.len() {
            current.push(',');
        }
        current.push_str(item);
    }
    if current.len() > open.len() {
        current.push_str(close);
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_pack_in_order_into_payloads_below_the_limit_that_parse_back() {
        let items: Vec<String> = (0..500u64)
            .map(|i| {
                serde_json::to_string(&Request {
                    id: i,
                    decision: "d".repeat(usize::try_from(i % 97).unwrap()),
                    key: i,
                    idempotency_key: "k".to_owned(),
                    command: Value::String("c".repeat(1_000)),
                    budget_ms: 400,
                })
                .unwrap()
            })
            .collect();
        let payloads = pack("Requests", &items);
        assert!(
            payloads.len() > 1,
            "500 requests of about a kilobyte each need several payloads"
        );
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "a payload of {} bytes", p.len());
            match serde_json::from_str::<Envelope>(p).expect("a payload parses") {
                Envelope::Requests(requests) => back.extend(requests),
                Envelope::Answers(_) => panic!("requests packed as answers"),
            }
        }
        let ids: Vec<u64> = back.iter().map(|r| r.id).collect();
        assert_eq!(ids, (0..500).collect::<Vec<u64>>());
        assert!(pack("Answers", &[]).is_empty());
        assert!(pack("Answers", &["x".repeat(MAX_PAYLOAD)]).is_empty());
    }

    #[test]
    fn a_committed_command_crosses_the_wire_unchanged() {
        let committed = Committed {
            positions: vec![Position::new(7), Position::new(8)],
            events: vec![
                Event::new("A", serde_json::json!({"x": 1.5})).tagged("k", "v:w"),
                Event::new("B", Value::Null),
            ],
            attempts: 2,
            replayed: false,
        };
        let wire = serde_json::to_string(&WireCommitted::from(&committed)).unwrap();
        let back: Committed = serde_json::from_str::<WireCommitted>(&wire).unwrap().into();
        assert_eq!(back, committed);
    }
}
