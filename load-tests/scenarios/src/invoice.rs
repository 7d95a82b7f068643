//! **invoice** — one global hot boundary: every command reads and extends the same sequence.
//!
//! `InvoiceCreated {number}`, no tags, queried by type only. Rule: numbers are exactly 1..n with
//! no gap and no duplicate.

use dcb_runtime::{Decision, Event, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

/// Violations: duplicated numbers plus numbers outside 1..n (which, with no duplicate, is
/// exactly the number of gaps).
pub const INVARIANT_SQL: &str = "SELECT (count(*) - count(DISTINCT payload->>'number')) \
       + count(*) FILTER (WHERE (payload->>'number')::bigint NOT BETWEEN 1 AND n) \
     FROM events, (SELECT count(*) AS n FROM events WHERE type = 'InvoiceCreated') t \
     WHERE type = 'InvoiceCreated'";

/// Creates the invoice with the next number.
pub struct NextInvoice;

/// The highest invoice number so far (0 before the first).
pub struct LastInvoice;

impl Projection for LastInvoice {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::of_types(["InvoiceCreated"]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, last: &mut u64, event: &SequencedEvent) {
        let number = event.event.payload()["number"].as_u64().unwrap_or(0);
        *last = (*last).max(number);
    }
}

impl Decision for NextInvoice {
    const NAME: &'static str = "next_invoice";
    type Projection = LastInvoice;
    type Rejection = std::convert::Infallible;

    fn projection(&self) -> LastInvoice {
        LastInvoice
    }

    fn decide(&self, last: &u64) -> Result<Vec<Event>, Self::Rejection> {
        Ok(vec![invoice_created(last + 1)])
    }
}

/// The event of invoice `number`.
pub fn invoice_created(number: u64) -> Event {
    Event::new("InvoiceCreated", json!({ "number": number }))
}
