//! Events as they are appended ([`Event`]) and as they are stored ([`SequencedEvent`]).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde_json::Value;
use uuid::Uuid;

use crate::limits::ValidationError;

/// The place of a stored event in the store: unique, strictly increasing, starting at 1.
///
/// Positions are assigned in commit order, so a reader that has seen position `p` has seen every
/// event at or below `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(i64);

impl Position {
    /// Wraps a raw position as read from the database.
    pub const fn new(raw: i64) -> Self {
        Self(raw)
    }

    /// The raw value, as stored in the `position` column.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key/value pair that places an event in consistency boundaries, written `key:value`.
///
/// The key holds no `:`; the value may. Validity is checked when the tag is used (see
/// [`crate::Limits`]), so building one never fails.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    key: String,
    value: String,
}

impl Tag {
    /// A tag from its key and value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }

    /// The part before the first `:`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The part after the first `:`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key, self.value)
    }
}

impl FromStr for Tag {
    type Err = ValidationError;

    /// Parses `key:value`, splitting at the first `:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((key, value)) => Ok(Tag::new(key, value)),
            None => Err(ValidationError::TagWithoutColon(s.to_owned())),
        }
    }
}

/// Shorthand for a tag, after the seed's predicate `P("BookID", id)`: `P("BookID", "b1")` is the
/// tag `BookID:b1`.
#[allow(non_snake_case)]
pub fn P(key: impl Into<String>, value: impl Into<String>) -> Tag {
    Tag::new(key, value)
}

/// An event to append: a type, tags, a JSON payload and a unique id.
///
/// The id makes appends idempotent: re-sending an append whose events are already stored returns
/// their original positions instead of storing them twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    id: Uuid,
    event_type: String,
    tags: Vec<Tag>,
    payload: Value,
}

impl Event {
    /// A new event with a fresh time-ordered id (UUIDv7) and no tags.
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            tags: Vec::new(),
            payload,
        }
    }

    /// Replaces the id, for callers that derive ids from their own idempotency keys.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Adds a tag; a tag the event already carries is not added twice.
    #[must_use]
    pub fn with_tag(mut self, tag: Tag) -> Self {
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// Adds the tag `key:value`.
    #[must_use]
    pub fn tagged(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_tag(Tag::new(key, value))
    }

    /// Adds one tag per named top-level payload field, `field:value`, so that queries such as
    /// `P("BookID", id)` find events whose payload is `{"BookID": id, ..}`.
    ///
    /// # Errors
    ///
    /// [`ValidationError::TagFieldMissing`] when the payload has no such field, and
    /// [`ValidationError::TagFieldNotScalar`] when it holds null, an object or an array.
    pub fn with_payload_tags<I, S>(mut self, fields: I) -> Result<Self, ValidationError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for field in fields {
            let field = field.as_ref();
            let value = match self.payload.get(field) {
                None => return Err(ValidationError::TagFieldMissing(field.to_owned())),
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                Some(_) => return Err(ValidationError::TagFieldNotScalar(field.to_owned())),
            };
            self = self.tagged(field, value);
        }
        Ok(self)
    }

    /// The unique id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The tags, in the order they were added, without duplicates.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The JSON payload.
    pub fn payload(&self) -> &Value {
        &self.payload
    }
}

/// Takes the payload apart without recursion. serde_json drops a `Value` recursively, so a
/// payload nested some ten thousand levels deep (which the store refuses, but only after taking
/// ownership of it) would overflow the stack where the event is dropped.
impl Drop for Event {
    fn drop(&mut self) {
        fn is_nested(v: &Value) -> bool {
            matches!(v, Value::Array(a) if !a.is_empty())
                || matches!(v, Value::Object(o) if !o.is_empty())
        }
        // Only non-empty containers go on the stack; scalars and empty containers are dropped
        // in place, so a flat payload costs no allocation.
        fn take_apart(value: Value, nested: &mut Vec<Value>) {
            match value {
                Value::Array(items) => nested.extend(items.into_iter().filter(is_nested)),
                Value::Object(map) => {
                    nested.extend(map.into_iter().map(|(_, v)| v).filter(is_nested))
                }
                _ => {}
            }
        }
        let mut nested = Vec::new();
        take_apart(std::mem::take(&mut self.payload), &mut nested);
        while let Some(value) = nested.pop() {
            take_apart(value, &mut nested);
        }
    }
}

/// A stored event: the event, its position and the time its transaction started.
#[derive(Debug, Clone, PartialEq)]
pub struct SequencedEvent {
    /// Where the event stands in the store.
    pub position: Position,
    /// When the appending transaction started (database clock).
    pub recorded_at: SystemTime,
    /// The event as appended.
    pub event: Event,
}

impl SequencedEvent {
    /// Rebuilds a stored event from its columns.
    pub(crate) fn from_parts(
        position: Position,
        id: Uuid,
        event_type: String,
        tags: Vec<Tag>,
        payload: Value,
        recorded_at: SystemTime,
    ) -> Self {
        Self {
            position,
            recorded_at,
            event: Event {
                id,
                event_type,
                tags,
                payload,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tag_round_trips_through_text_splitting_at_the_first_colon() {
        let tag: Tag = "url:https://x".parse().unwrap();
        assert_eq!(tag.key(), "url");
        assert_eq!(tag.value(), "https://x");
        assert_eq!(tag.to_string(), "url:https://x");
        assert!("nocolon".parse::<Tag>().is_err());
    }

    #[test]
    fn payload_tags_take_scalar_fields_and_refuse_the_rest() {
        let e = Event::new(
            "BookBorrowed",
            json!({"BookID": "b1", "Copies": 3, "Meta": {}}),
        );
        let tagged = e.clone().with_payload_tags(["BookID", "Copies"]).unwrap();
        assert_eq!(tagged.tags(), &[P("BookID", "b1"), P("Copies", "3")]);
        assert_eq!(
            e.clone().with_payload_tags(["Nope"]),
            Err(ValidationError::TagFieldMissing("Nope".into()))
        );
        assert_eq!(
            e.with_payload_tags(["Meta"]),
            Err(ValidationError::TagFieldNotScalar("Meta".into()))
        );
    }

    #[test]
    fn an_event_with_a_payload_nested_far_too_deep_drops_without_overflowing() {
        // Built iteratively, dropped by the event: serde_json's recursive drop of this value
        // overflows a test thread's 2 MiB stack.
        let deep = (0..200_000).fold(Value::Null, |inner, i| {
            if i % 2 == 0 {
                Value::Array(vec![inner, json!(i)])
            } else {
                Value::Object(serde_json::Map::from_iter([("k".to_owned(), inner)]))
            }
        });
        drop(Event::new("Deep", deep));
    }

    #[test]
    fn a_tag_is_not_added_twice() {
        let e = Event::new("T", json!({})).tagged("a", "1").tagged("a", "1");
        assert_eq!(e.tags().len(), 1);
    }
}
