//! What the store accepts: its limits, and the error naming the rule an input breaks. A leaf
//! module: the types it describes (events, tags, queries) depend on it, not it on them.

use uuid::Uuid;

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
    /// A query with no items; [`crate::Query::all`] is how to say "everything".
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
