//! **invoice** — one global hot boundary: every command reads and extends the same sequence.
//!
//! `InvoiceCreated {number}`, no tags, queried by type only. Rule: numbers are exactly 1..n with
//! no gap and no duplicate.

use dcb_runtime::{Decision, Event, Projection, Query, QueryItem, SequencedEvent};
use serde_json::json;

/// Violations: extra copies of a number (an invoice without a number counts as one), numbers
/// below 1, and numbers missing from 1 up to the highest (each missing number counts: `1, 2, 5`
/// is two violations, 3 and 4).
pub const INVARIANT_SQL: &str = "\
WITH invoices AS (SELECT (payload->>'number')::bigint AS number \
                  FROM events WHERE type = 'InvoiceCreated') \
SELECT (count(*) - count(DISTINCT number)) \
     + count(*) FILTER (WHERE number < 1) \
     + (coalesce(max(number) FILTER (WHERE number >= 1), 0) \
        - count(DISTINCT number) FILTER (WHERE number >= 1)) \
FROM invoices";

/// Creates the invoice with the next number. Serialisable, so that a runtime may forward it to
/// the process owning the invoice sequence (`RuntimeBuilder::forward`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct NextInvoice;

/// The highest invoice number so far (0 before the first).
#[derive(Clone, PartialEq, Eq, Hash)]
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
