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
    /// Most index scans one read may need (default 4,096): one per type of an item without tags,
    /// one per item with several tags, one per distinct list of types among items with one tag.
    /// PostgreSQL cannot plan a read of about 7,000 (its stack depth limit).
    pub max_query_scans: usize,
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
            max_query_scans: 4_096,
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
    /// A read whose query needs more index scans than [`Limits::max_query_scans`].
    #[error("a query needing {scans} index scans is larger than the limit of {limit}")]
    QueryTooLarge {
        /// Scans the query needs.
        scans: usize,
        /// The limit.
        limit: usize,
    },
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

/// serde_json's compact form, except for floats with an integral value, written in plain decimal
/// with a fraction (`1e16` as `10000000000000000.0`). jsonb stores numbers as `numeric` and prints
/// them without an exponent and with the fraction digits they were given: `1e+16` would read back
/// as the integer `10000000000000000`, another `Value` than the one appended.
struct StoredJson;

impl serde_json::ser::Formatter for StoredJson {
    fn write_f64<W>(&mut self, writer: &mut W, value: f64) -> std::io::Result<()>
    where
        W: ?Sized + std::io::Write,
    {
        if value.fract() == 0.0 {
            // Display writes the shortest digits that read back as `value`, padded with zeros.
            write!(writer, "{value}.0")
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

/// The payload as sent to PostgreSQL.
fn stored_json(payload: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    // Serializing a Value into memory cannot fail (its keys are strings, its floats finite), and
    // the output is UTF-8.
    let _ = payload.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out, StoredJson,
    ));
    String::from_utf8(out).unwrap_or_default()
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
    let json = stored_json(event.payload());
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

/// The index scans a read of `query` takes: the PostgreSQL store's read (`read_sql::build`) scans
/// each type of an item without tags, each item with several tags, and each distinct list of
/// types among the items with one tag (their tags are looked up together).
fn read_scans(query: &Query) -> usize {
    let mut single_tag_types: HashSet<&[String]> = HashSet::new();
    query
        .items()
        .iter()
        .map(|item| match item.tags().len() {
            0 => item.types().len(),
            1 => usize::from(single_tag_types.insert(item.types())),
            _ => 1,
        })
        .sum()
}

/// Checks a query to read with: valid, and small enough for one statement.
pub(crate) fn validate_read(query: &Query, limits: &Limits) -> Result<(), ValidationError> {
    validate_query_with(query, limits)?;
    let scans = read_scans(query);
    if scans > limits.max_query_scans {
        return Err(ValidationError::QueryTooLarge {
            scans,
            limit: limits.max_query_scans,
        });
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
    fn read_scans_count_what_the_postgres_read_scans() {
        use crate::event::P;
        use crate::query::QueryItem;
        let q = Query::from_items([
            QueryItem::of_types(["A", "B", "C"]),
            QueryItem::with_tags([P("k", "1"), P("k", "2")]),
            QueryItem::new(["A"], [P("x", "1"), P("y", "1")]),
            QueryItem::with_tags([P("s", "1")]),
            QueryItem::with_tags([P("s", "2")]),
            QueryItem::new(["A", "B"], [P("s", "3")]),
            QueryItem::new(["A", "B"], [P("s", "4")]),
            QueryItem::new(["B", "A"], [P("s", "5")]),
        ]);
        assert_eq!(read_scans(&q), 3 + 1 + 1 + 1 + 1 + 1);
        assert_eq!(read_scans(&Query::all()), 0);
        let limits = Limits {
            max_query_scans: 7,
            ..Limits::default()
        };
        assert_eq!(
            validate_read(&q, &limits),
            Err(ValidationError::QueryTooLarge { scans: 8, limit: 7 })
        );
        let limits = Limits {
            max_query_scans: 8,
            ..Limits::default()
        };
        assert_eq!(validate_read(&q, &limits), Ok(()));
    }

    #[test]
    fn integral_floats_are_sent_with_a_fraction() {
        let payload = serde_json::json!({
            "big": 1e16, "neg": -2.5e300, "max": f64::MAX, "one": 1.0, "zero": -0.0,
            "small": 1e-7, "half": 0.5, "int": 10_000_000_000_000_000_u64,
        });
        let sent = stored_json(&payload);
        assert!(sent.contains(r#""big":10000000000000000.0"#), "{sent}");
        assert!(
            sent.contains(r#""neg":-25"#) && sent.contains("000.0,"),
            "{sent}"
        );
        assert!(
            sent.contains(r#""one":1.0,"#) && sent.contains(r#""zero":-0.0"#),
            "{sent}"
        );
        assert!(sent.contains(r#""int":10000000000000000,"#), "{sent}");
        // Everything reads back as the same Value (integers stay integers, floats floats).
        assert_eq!(serde_json::from_str::<Value>(&sent).unwrap(), payload);
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
