//! What crosses between a process and the elected appender: one line of JSON per batch, one per
//! batch's answers. The follower validated the events; their payloads travel as the JSON text
//! it made of them, which the leader writes as is.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::append::{AppendCondition, Appended};
use crate::error::AppendError;
use crate::event::{Event, Position, Tag};
use crate::query::{Query, QueryItem};

/// One append of a batch.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireAppend {
    pub(super) events: Vec<WireEvent>,
    pub(super) condition: Option<WireCondition>,
    pub(super) append_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireEvent {
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    tags: WireTags,
    payload: String,
}

/// Tags as `key`, `value` pairs.
type WireTags = Vec<(String, String)>;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireCondition {
    /// `None`: every event ([`Query::all`]); else the items, each its types and tags.
    items: Option<Vec<(Vec<String>, WireTags)>>,
    after: Option<i64>,
}

/// What became of one append.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum WireAnswer {
    Stored {
        first: i64,
        last: i64,
        replayed: bool,
        /// Microseconds since the epoch, when this append stored its events.
        recorded_at: Option<u64>,
    },
    ConditionFailed {
        after: Option<i64>,
    },
    DuplicateEventId(Uuid),
    /// The leader could not write it (its transaction failed, it was shutting down): the
    /// follower writes the batch itself.
    NotWritten,
}

fn tag_pairs(tags: &[Tag]) -> WireTags {
    tags.iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

impl WireEvent {
    pub(super) fn new(event: &Event, payload: &str) -> Self {
        Self {
            id: event.id(),
            event_type: event.event_type().to_owned(),
            tags: tag_pairs(event.tags()),
            payload: payload.to_owned(),
        }
    }

    /// The event and its payload's text; `None` if the payload is not JSON.
    pub(super) fn into_event(self) -> Option<(Event, String)> {
        let value = serde_json::from_str(&self.payload).ok()?;
        let event = self
            .tags
            .into_iter()
            .fold(Event::new(self.event_type, value), |e, (k, v)| {
                e.with_tag(Tag::new(k, v))
            })
            .with_id(self.id);
        Some((event, self.payload))
    }
}

impl From<&AppendCondition> for WireCondition {
    fn from(c: &AppendCondition) -> Self {
        let query = &c.fail_if_events_match;
        Self {
            items: (!query.is_all()).then(|| {
                query
                    .items()
                    .iter()
                    .map(|item| (item.types().to_vec(), tag_pairs(item.tags())))
                    .collect()
            }),
            after: c.after.map(Position::get),
        }
    }
}

impl From<WireCondition> for AppendCondition {
    fn from(w: WireCondition) -> Self {
        let query = match w.items {
            None => Query::all(),
            Some(items) => Query::from_items(items.into_iter().map(|(types, tags)| {
                QueryItem::new(types, tags.into_iter().map(|(k, v)| Tag::new(k, v)))
            })),
        };
        AppendCondition::new(query, w.after.map(Position::new))
    }
}

impl From<&Result<Appended, AppendError>> for WireAnswer {
    fn from(answer: &Result<Appended, AppendError>) -> Self {
        match answer {
            Ok(a) => Self::Stored {
                first: a.first.get(),
                last: a.last.get(),
                replayed: a.replayed,
                recorded_at: a.recorded_at.map(|t| {
                    let micros = t
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros();
                    u64::try_from(micros).unwrap_or(u64::MAX)
                }),
            },
            Err(AppendError::ConditionFailed { after }) => Self::ConditionFailed {
                after: after.map(Position::get),
            },
            Err(AppendError::DuplicateEventId(id)) => Self::DuplicateEventId(*id),
            Err(_) => Self::NotWritten,
        }
    }
}

impl WireAnswer {
    /// The outcome; `None` for [`WireAnswer::NotWritten`].
    pub(super) fn into_result(self) -> Option<Result<Appended, AppendError>> {
        Some(match self {
            Self::Stored {
                first,
                last,
                replayed,
                recorded_at,
            } => Ok(Appended {
                first: Position::new(first),
                last: Position::new(last),
                replayed,
                recorded_at: recorded_at
                    .map(|micros| SystemTime::UNIX_EPOCH + Duration::from_micros(micros)),
            }),
            Self::ConditionFailed { after } => Err(AppendError::ConditionFailed {
                after: after.map(Position::new),
            }),
            Self::DuplicateEventId(id) => Err(AppendError::DuplicateEventId(id)),
            Self::NotWritten => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;

    #[test]
    fn an_append_crosses_the_wire_unchanged() {
        let event = Event::new("Enrolled", serde_json::json!({"n": 1.5}))
            .tagged("course", "c1")
            .tagged("student", "s1");
        let payload = serde_json::to_string(event.payload()).expect("json");
        let condition = AppendCondition::new(
            Query::from_items([
                QueryItem::new(["Enrolled", "Left"], [P("course", "c1")]),
                QueryItem::of_types(["Closed"]),
            ]),
            Some(Position::new(7)),
        );
        let line = serde_json::to_string(&WireAppend {
            events: vec![WireEvent::new(&event, &payload)],
            condition: Some((&condition).into()),
            append_id: Uuid::from_u128(9),
        })
        .expect("serialize");
        let back: WireAppend = serde_json::from_str(&line).expect("parse");
        let (event_back, payload_back) = back
            .events
            .into_iter()
            .next()
            .and_then(WireEvent::into_event)
            .expect("an event");
        assert_eq!(event_back, event);
        assert_eq!(payload_back, payload);
        assert_eq!(
            AppendCondition::from(back.condition.expect("a condition")),
            condition
        );
        let all = AppendCondition::new(Query::all(), None);
        assert_eq!(AppendCondition::from(WireCondition::from(&all)), all);
    }

    #[test]
    fn an_answer_crosses_the_wire_unchanged() {
        let stored: Result<Appended, AppendError> = Ok(Appended {
            first: Position::new(3),
            last: Position::new(5),
            replayed: false,
            recorded_at: Some(
                SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            ),
        });
        let failed: Result<Appended, AppendError> = Err(AppendError::ConditionFailed {
            after: Some(Position::new(2)),
        });
        for answer in [stored, failed] {
            let line = serde_json::to_string(&WireAnswer::from(&answer)).expect("serialize");
            let back: WireAnswer = serde_json::from_str(&line).expect("parse");
            // `AppendError` holds database errors, which do not compare: compare what shows.
            assert_eq!(
                format!("{:?}", back.into_result()),
                format!("{:?}", Some(answer))
            );
        }
        let lost: Result<Appended, AppendError> = Err(crate::error::StoreError::AnswerLost.into());
        assert!(WireAnswer::from(&lost).into_result().is_none());
    }
}
