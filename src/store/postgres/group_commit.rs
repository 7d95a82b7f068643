//! Group commit: appends from every task are queued, and one writer task sends whatever has
//! queued while the previous batch was committing as one call of `dcb_append`: one statement, one
//! transaction, one WAL flush for the whole batch.
//!
//! Writers are serialised by `dcb_append`'s advisory lock anyway (positions must follow commit
//! order), so batching is what lets concurrent appenders share a commit instead of queueing for it.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position};

const APPEND_SQL: &str = "SELECT status, first_position, dup_id FROM dcb_append(\
    $1, $2, $3, $4, $5, $6::text[]::jsonb[], $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

struct Request {
    events: Vec<Event>,
    payloads: Vec<String>,
    condition: Option<AppendCondition>,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// The handle through which appends reach the writer task.
pub(super) struct GroupCommitter {
    queue: mpsc::Sender<Request>,
}

impl GroupCommitter {
    /// Starts the writer task; it stops when the last handle is dropped.
    pub(super) fn start(pool: Pool, max_batch: usize) -> Self {
        let (queue, requests) = mpsc::channel(max_batch * 4);
        tokio::spawn(write_batches(pool, requests, max_batch));
        Self { queue }
    }

    /// Queues one validated append and waits for its own outcome.
    pub(super) async fn submit(
        &self,
        events: Vec<Event>,
        payloads: Vec<String>,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, AppendError> {
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            events,
            payloads,
            condition,
            reply,
        };
        self.queue
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }
}

async fn write_batches(pool: Pool, mut requests: mpsc::Receiver<Request>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while requests.recv_many(&mut batch, max_batch).await > 0 {
        metrics_batch_size(batch.len());
        match commit(&pool, &batch).await {
            Ok(outcomes) => {
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    // The caller may have gone away; its events are stored all the same.
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                // The whole batch failed (or its commit is unknown): every caller learns it, and
                // may re-send, which event ids make idempotent.
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(AppendError::Store(e.clone())));
                }
            }
        }
    }
}

fn metrics_batch_size(_size: usize) {}

/// The batch as the flattened arrays `dcb_append` takes.
#[derive(Default)]
struct Encoded<'a> {
    ev_ids: Vec<Uuid>,
    ev_types: Vec<&'a str>,
    ev_tags: Vec<String>,
    ev_tag_starts: Vec<i32>,
    ev_tag_counts: Vec<i32>,
    ev_payloads: Vec<&'a str>,
    req_event_counts: Vec<i32>,
    req_conditional: Vec<bool>,
    req_after: Vec<Option<i64>>,
    req_item_counts: Vec<i32>,
    item_types: Vec<&'a str>,
    item_type_starts: Vec<i32>,
    item_type_counts: Vec<i32>,
    item_tags: Vec<String>,
    item_tag_starts: Vec<i32>,
    item_tag_counts: Vec<i32>,
}

/// Array lengths and 1-based offsets as `int`. Validation caps events, tags and items far below
/// `i32::MAX`.
fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl<'a> Encoded<'a> {
    fn new(batch: &'a [Request]) -> Self {
        let mut enc = Encoded::default();
        for request in batch {
            enc.req_event_counts.push(int(request.events.len()));
            for (event, payload) in request.events.iter().zip(&request.payloads) {
                enc.ev_ids.push(event.id());
                enc.ev_types.push(event.event_type());
                enc.ev_tag_starts.push(int(enc.ev_tags.len() + 1));
                enc.ev_tag_counts.push(int(event.tags().len()));
                enc.ev_tags
                    .extend(event.tags().iter().map(ToString::to_string));
                enc.ev_payloads.push(payload);
            }
            let Some(condition) = &request.condition else {
                enc.req_conditional.push(false);
                enc.req_after.push(None);
                enc.req_item_counts.push(0);
                continue;
            };
            enc.req_conditional.push(true);
            enc.req_after.push(condition.after.map(Position::get));
            let query = &condition.fail_if_events_match;
            if query.is_all() {
                // An item naming nothing stands for Query::all() in dcb_append.
                enc.req_item_counts.push(1);
                enc.item_type_starts.push(int(enc.item_types.len() + 1));
                enc.item_type_counts.push(0);
                enc.item_tag_starts.push(int(enc.item_tags.len() + 1));
                enc.item_tag_counts.push(0);
                continue;
            }
            enc.req_item_counts.push(int(query.items().len()));
            for item in query.items() {
                enc.item_type_starts.push(int(enc.item_types.len() + 1));
                enc.item_type_counts.push(int(item.types().len()));
                enc.item_types.extend(item.types().iter().map(String::as_str));
                enc.item_tag_starts.push(int(enc.item_tags.len() + 1));
                enc.item_tag_counts.push(int(item.tags().len()));
                enc.item_tags
                    .extend(item.tags().iter().map(ToString::to_string));
            }
        }
        enc
    }
}

/// Writes the batch in one statement and maps each request's row to its outcome.
async fn commit(
    pool: &Pool,
    batch: &[Request],
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    let enc = Encoded::new(batch);
    let client = pool.get().await?;
    let statement = client.prepare_cached(APPEND_SQL).await?;
    let rows = client
        .query(
            &statement,
            &[
                &enc.ev_ids,
                &enc.ev_types,
                &enc.ev_tags,
                &enc.ev_tag_starts,
                &enc.ev_tag_counts,
                &enc.ev_payloads,
                &enc.req_event_counts,
                &enc.req_conditional,
                &enc.req_after,
                &enc.req_item_counts,
                &enc.item_types,
                &enc.item_type_starts,
                &enc.item_type_counts,
                &enc.item_tags,
                &enc.item_tag_starts,
                &enc.item_tag_counts,
            ],
        )
        .await?;
    if rows.len() != batch.len() {
        return Err(StoreError::Corrupt(format!(
            "dcb_append answered {} rows for {} requests",
            rows.len(),
            batch.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (row, request) in rows.iter().zip(batch) {
        let status: i16 = row.try_get(0)?;
        let first: Option<i64> = row.try_get(1)?;
        let last = |first: i64| {
            let n = i64::try_from(request.events.len()).unwrap_or(i64::MAX);
            Appended {
                first: Position::new(first),
                last: Position::new(first + n - 1),
                replayed: status == 2,
            }
        };
        outcomes.push(match (status, first) {
            (0 | 2, Some(first)) => Ok(last(first)),
            (1, _) => Err(AppendError::ConditionFailed {
                after: request.condition.as_ref().and_then(|c| c.after),
            }),
            (3, _) => Err(AppendError::DuplicateEventId(row.try_get(2)?)),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "dcb_append answered status {status}"
                )));
            }
        });
    }
    Ok(outcomes)
}
