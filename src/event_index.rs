//! What a set of events could match, known without matching each event: the pre-filter of the
//! appends out (`runtime/in_flight.rs`) and of the appender's batch (`store/postgres/
//! group_commit.rs`).
//!
//! An event can only match a query item if it carries the item's first tag or, for an item
//! naming no tag, one of its types. Tags are kept as hashes: no formatting or cloning per event
//! or per look-up. A "may match" is confirmed by an exact match of the events, so a hash
//! collision costs a comparison, never a wrong answer.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::event::{Event, Tag};
use crate::query::Query;

/// The tags (hashed) and types of the events added so far.
#[derive(Default)]
pub(crate) struct EventIndex {
    tags: HashSet<u64>,
    types: HashSet<String>,
}

impl EventIndex {
    pub(crate) fn add(&mut self, event: &Event) {
        self.tags.extend(event.tags().iter().map(fingerprint));
        if !self.types.contains(event.event_type()) {
            self.types.insert(event.event_type().to_owned());
        }
    }

    /// Whether `query` may match an event added: `false` means it matches none.
    pub(crate) fn may_match(&self, query: &Query) -> bool {
        query.is_all()
            || query.items().iter().any(|item| match item.tags().first() {
                Some(tag) => self.tags.contains(&fingerprint(tag)),
                // An item naming nothing matches every event.
                None => {
                    item.types().is_empty() || item.types().iter().any(|t| self.types.contains(t))
                }
            })
    }
}

/// The same for equal tags within a process.
fn fingerprint(tag: &Tag) -> u64 {
    let mut hasher = DefaultHasher::new();
    tag.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::QueryItem;
    use serde_json::json;

    #[test]
    fn rules_out_only_queries_that_match_no_event_added() {
        let mut index = EventIndex::default();
        index.add(&Event::new("Opened", json!({})).tagged("account", "a1"));
        let on = |item: QueryItem| index.may_match(&item.into());
        assert!(on(QueryItem::with_tags([Tag::new("account", "a1")])));
        assert!(!on(QueryItem::with_tags([Tag::new("account", "a2")])));
        assert!(on(QueryItem::of_types(["Opened"])));
        assert!(!on(QueryItem::of_types(["Closed"])));
        assert!(index.may_match(&Query::all()));
        assert!(!EventIndex::default().may_match(&QueryItem::of_types(["Opened"]).into()));
    }
}
