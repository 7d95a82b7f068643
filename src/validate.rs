//! Input validation of events: every rule the store enforces on what it is asked to store,
//! before touching the database (queries are checked in `query/validate.rs`).

use std::collections::HashSet;

use serde_json::Value;

use crate::event::{Event, Tag};
use crate::limits::{Limits, MAX_READABLE_DEPTH, ValidationError};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
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
