//! Input validation: every rule the store enforces before touching the database, with its limit.

use std::collections::HashSet;

use serde_json::Value;
use uuid::Uuid;

use crate::event::{Event, Tag};
use crate::query::Query;

/// Limits on what the store accepts; [`Limits::default`] documents the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest event type, in UTF-8 bytes (default 256).
    pub max_type_bytes: usize,
    /// Longest tag written `key:value`, in UTF-8 bytes (default 1024; B-tree index entries
    /// must stay well under PostgreSQL's 2704-byte limit).
    pub max_tag_bytes: usize,
    /// Most tags on one event (default 64).
    pub max_tags_per_event: usize,
    /// Largest payload, as serialized JSON, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects in a payload (default 64; values above
    /// [`MAX_READABLE_DEPTH`] count as that, since deeper JSON could be stored but never read back).
    pub max_payload_depth: usize,
    /// Most events in one append (default 10,000).
    pub max_events_per_append: usize,
}

/// The deepest nesting that reads back: serde_json's parser refuses JSON nested deeper than 128.
pub const MAX_READABLE_DEPTH: usize = 127;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_type_bytes: 256,
            max_tag_bytes: 1024,
            max_tags_per_event: 64,
            max_payload_bytes: 1024 * 1024,
            max_payload_depth: 64,
            max_events_per_append: 10_000,
        }
    }
}

/// Input the store refuses, found before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// An append without events.
    #[error("an append needs at least one event")]
    NoEvents,
    /// More events in one append than [`Limits::max_events_per_append`].
    #[error("{count} events in one append, more than the limit of {limit}")]
    TooManyEvents {
        /// Events given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An empty event type.
    #[error("an event type must not be empty")]
    EmptyType,
    /// An event type longer than [`Limits::max_type_bytes`].
    #[error("event type of {bytes} bytes is longer than the limit of {limit}")]
    TypeTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A tag with an empty key.
    #[error("tag {0:?} has an empty key")]
    EmptyTagKey(String),
    /// A tag key containing `:`.
    #[error("tag key {0:?} contains ':'")]
    TagKeyHasColon(String),
    /// Text parsed as a tag without a `:`.
    #[error("{0:?} is not a tag written key:value")]
    TagWithoutColon(String),
    /// A tag longer than [`Limits::max_tag_bytes`].
    #[error("tag of {bytes} bytes is longer than the limit of {limit}")]
    TagTooLong {
        /// Its length as `key:value`.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// More tags on one event than [`Limits::max_tags_per_event`].
    #[error("{count} tags on one event, more than the limit of {limit}")]
    TooManyTags {
        /// Tags given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A NUL character, which PostgreSQL cannot store in text; `field` says where.
    #[error("{field} contains a NUL character")]
    NulByte {
        /// Where it was found: "event type", "tag", "payload".
        field: &'static str,
    },
    /// A payload larger than [`Limits::max_payload_bytes`].
    #[error("payload of {bytes} bytes is larger than the limit of {limit}")]
    PayloadTooLarge {
        /// Its serialized size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A payload nested deeper than [`Limits::max_payload_depth`].
    #[error("payload nested deeper than the limit of {limit}")]
    PayloadTooDeep {
        /// The limit.
        limit: usize,
    },
    /// A payload field named to derive a tag is absent.
    #[error("payload has no field {0:?} to derive a tag from")]
    TagFieldMissing(String),
    /// A payload field named to derive a tag is null, an object or an array.
    #[error("payload field {0:?} is not a string, number or boolean")]
    TagFieldNotScalar(String),
    /// The same event id twice in one append.
    #[error("event id {0} appears twice in one append")]
    DuplicateIdInAppend(Uuid),
    /// A query with no items; [`Query::all`] is how to say "everything".
    #[error("a query needs at least one item (use Query::all() to match everything)")]
    EmptyQuery,
    /// A query item naming neither types nor tags.
    #[error("a query item must name at least one event type or tag")]
    EmptyQueryItem,
    /// An empty list of types or predicates given to the filter builder.
    #[error("an empty list of event types or predicates was given")]
    EmptyList,
}

pub(crate) fn validate_type(t: &str, limits: &Limits) -> Result<(), ValidationError> {
    if t.is_empty() {
        return Err(ValidationError::EmptyType);
    }
    if t.len() > limits.max_type_bytes {
        return Err(ValidationError::TypeTooLong {
            bytes: t.len(),
            limit: limits.max_type_bytes,
        });
    }
    if t.contains('\0') {
        return Err(ValidationError::NulByte {
            field: "event type",
        });
    }
    Ok(())
}

pub(crate) fn validate_tag(tag: &Tag, limits: &Limits) -> Result<(), ValidationError> {
    if tag.key().is_empty() {
        return Err(ValidationError::EmptyTagKey(tag.to_string()));
    }
    if tag.key().contains(':') {
        return Err(ValidationError::TagKeyHasColon(tag.key().to_owned()));
    }
    let bytes = tag.key().len() + 1 + tag.value().len();
    if bytes > limits.max_tag_bytes {
        return Err(ValidationError::TagTooLong {
            bytes,
            limit: limits.max_tag_bytes,
        });
    }
    if tag.key().contains('\0') || tag.value().contains('\0') {
        return Err(ValidationError::NulByte { field: "tag" });
    }
    Ok(())
}

/// Walks the payload without recursion (a hostile payload must not overflow the stack).
fn validate_payload(payload: &Value, limits: &Limits) -> Result<(), ValidationError> {
    let max_depth = limits.max_payload_depth.min(MAX_READABLE_DEPTH);
    let mut stack = vec![(payload, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => {
                return Err(ValidationError::NulByte { field: "payload" });
            }
            Value::Array(items) => {
                if depth >= max_depth {
                    return Err(ValidationError::PayloadTooDeep { limit: max_depth });
                }
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            Value::Object(map) => {
                if depth >= max_depth {
                    return Err(ValidationError::PayloadTooDeep { limit: max_depth });
                }
                for (key, v) in map {
                    if key.contains('\0') {
                        return Err(ValidationError::NulByte { field: "payload" });
                    }
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks one event and returns its payload serialized, measured against the size limit.
pub(crate) fn validate_event(event: &Event, limits: &Limits) -> Result<String, ValidationError> {
    validate_type(event.event_type(), limits)?;
    if event.tags().len() > limits.max_tags_per_event {
        return Err(ValidationError::TooManyTags {
            count: event.tags().len(),
            limit: limits.max_tags_per_event,
        });
    }
    for tag in event.tags() {
        validate_tag(tag, limits)?;
    }
    validate_payload(event.payload(), limits)?;
    // Serializing a Value whose depth is bounded cannot fail: its keys are strings.
    let json = serde_json::to_string(event.payload()).unwrap_or_default();
    if json.len() > limits.max_payload_bytes {
        return Err(ValidationError::PayloadTooLarge {
            bytes: json.len(),
            limit: limits.max_payload_bytes,
        });
    }
    Ok(json)
}

/// Checks the events of one append; returns their payloads serialized, in order.
pub(crate) fn validate_events(
    events: &[Event],
    limits: &Limits,
) -> Result<Vec<String>, ValidationError> {
    if events.is_empty() {
        return Err(ValidationError::NoEvents);
    }
    if events.len() > limits.max_events_per_append {
        return Err(ValidationError::TooManyEvents {
            count: events.len(),
            limit: limits.max_events_per_append,
        });
    }
    let mut ids = HashSet::with_capacity(events.len());
    for e in events {
        if !ids.insert(e.id()) {
            return Err(ValidationError::DuplicateIdInAppend(e.id()));
        }
    }
    events.iter().map(|e| validate_event(e, limits)).collect()
}

/// Checks a query with the default limits.
pub(crate) fn validate_query(query: &Query) -> Result<(), ValidationError> {
    validate_query_with(query, &Limits::default())
}

/// Checks a query: every item names something, every type and tag is valid.
pub(crate) fn validate_query_with(query: &Query, limits: &Limits) -> Result<(), ValidationError> {
    if query.is_all() {
        return Ok(());
    }
    if query.items().is_empty() {
        return Err(ValidationError::EmptyQuery);
    }
    for item in query.items() {
        if item.types().is_empty() && item.tags().is_empty() {
            return Err(ValidationError::EmptyQueryItem);
        }
        for t in item.types() {
            validate_type(t, limits)?;
        }
        for tag in item.tags() {
            validate_tag(tag, limits)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn the_deepest_accepted_payload_parses_back() {
        let limits = Limits {
            max_payload_depth: 1_000,
            ..Limits::default()
        };
        let deepest = nested(MAX_READABLE_DEPTH);
        assert_eq!(validate_payload(&deepest, &limits), Ok(()));
        let text = serde_json::to_string(&deepest).unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        assert_eq!(
            validate_payload(&nested(MAX_READABLE_DEPTH + 1), &limits),
            Err(ValidationError::PayloadTooDeep {
                limit: MAX_READABLE_DEPTH
            })
        );
    }
}
