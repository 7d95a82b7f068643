//! Queries: the consistency boundary of a decision, an OR of items.

mod builder;
mod validate;

use std::collections::HashSet;
use std::hash::Hash;

pub use builder::{Complete, Empty, Matching, Typed};

use crate::event::{Event, Tag};
pub(crate) use validate::{validate_query_with, validate_read};

/// One item of a query: matches an event whose type is one of `types` (or any type when `types`
/// is empty) and that carries every tag of `tags` (or any tags when `tags` is empty).
///
/// An item must name at least one type or one tag; the store refuses one that names neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct QueryItem {
    types: Vec<String>,
    tags: Vec<Tag>,
}

impl QueryItem {
    /// An item with the given types (OR) and tags (AND).
    pub fn new<T, S>(types: T, tags: impl IntoIterator<Item = Tag>) -> Self
    where
        T: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            types: first_of_each(types.into_iter().map(Into::into).collect()),
            tags: first_of_each(tags.into_iter().collect()),
        }
    }

    /// An item matching events of any of these types, whatever their tags.
    pub fn of_types<T, S>(types: T) -> Self
    where
        T: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(types, [])
    }

    /// An item matching events carrying all of these tags, whatever their type.
    pub fn with_tags(tags: impl IntoIterator<Item = Tag>) -> Self {
        Self::new(std::iter::empty::<String>(), tags)
    }

    /// The event types (OR); empty means any type.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// The tags (AND); empty means any tags.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Whether the event falls inside this item.
    pub fn matches(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event.event_type()))
            && self.tags.iter().all(|t| event.tags().contains(t))
    }
}

/// Each distinct element once, where it first appears. In linear time: comparing each element
/// with those kept made an item of 100,000 types take most of a minute to build.
fn first_of_each<T: Eq + Hash>(all: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::with_capacity(all.len());
    let keep: Vec<bool> = all.iter().map(|x| seen.insert(x)).collect();
    all.into_iter()
        .zip(keep)
        .filter_map(|(x, keep)| keep.then_some(x))
        .collect()
}

/// A consistency boundary: the events a decision depends on.
///
/// Either every event ([`Query::all`]) or the events matched by at least one of its items.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    All,
    Items(Vec<QueryItem>),
}

impl Query {
    /// Matches every event in the store.
    pub fn all() -> Self {
        Self { scope: Scope::All }
    }

    /// Matches the events matched by any of the items. A query without items is refused by the
    /// store; use [`Query::all`] to mean everything.
    pub fn from_items(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Self {
            scope: Scope::Items(items.into_iter().collect()),
        }
    }

    /// Starts the seed's fluent filter: `Query::matching().any_event_type_of([..])
    /// .and_any_predicate_of([..]).finalize()`.
    pub fn matching() -> Matching<Empty> {
        Matching::start(Vec::new())
    }

    /// This query, also matching what `item` matches.
    #[must_use]
    pub fn or(self, item: QueryItem) -> Self {
        match self.scope {
            Scope::All => self,
            Scope::Items(mut items) => {
                items.push(item);
                Self {
                    scope: Scope::Items(items),
                }
            }
        }
    }

    /// Whether this is [`Query::all`].
    pub fn is_all(&self) -> bool {
        matches!(self.scope, Scope::All)
    }

    /// The items; empty for [`Query::all`].
    pub fn items(&self) -> &[QueryItem] {
        match &self.scope {
            Scope::All => &[],
            Scope::Items(items) => items,
        }
    }

    /// Whether the event falls inside this boundary.
    pub fn matches(&self, event: &Event) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Items(items) => items.iter().any(|i| i.matches(event)),
        }
    }
}

impl From<QueryItem> for Query {
    fn from(item: QueryItem) -> Self {
        Query::from_items([item])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;
    use serde_json::json;

    fn event(t: &str, tags: &[(&str, &str)]) -> Event {
        tags.iter()
            .fold(Event::new(t, json!({})), |e, (k, v)| e.tagged(*k, *v))
    }

    #[test]
    fn an_item_needs_one_of_its_types_and_all_of_its_tags() {
        let item = QueryItem::new(["A", "B"], [P("x", "1"), P("y", "2")]);
        assert!(item.matches(&event("A", &[("x", "1"), ("y", "2"), ("z", "3")])));
        assert!(item.matches(&event("B", &[("y", "2"), ("x", "1")])));
        assert!(!item.matches(&event("C", &[("x", "1"), ("y", "2")])));
        assert!(!item.matches(&event("A", &[("x", "1")])));
    }

    #[test]
    fn an_item_keeps_the_first_of_repeated_types_and_tags_in_order() {
        let item = QueryItem::new(
            ["B", "A", "B", "C", "A"],
            [P("y", "1"), P("x", "1"), P("y", "1")],
        );
        assert_eq!(item.types(), ["B", "A", "C"]);
        assert_eq!(item.tags(), [P("y", "1"), P("x", "1")]);
        let many = QueryItem::of_types((0..200_000).map(|i| format!("T{}", i % 100_000)));
        assert_eq!(many.types().len(), 100_000);
        assert_eq!(many.types()[99_999], "T99999");
    }

    #[test]
    fn type_only_and_tag_only_items_ignore_the_other_half() {
        assert!(QueryItem::of_types(["A"]).matches(&event("A", &[("q", "1")])));
        assert!(QueryItem::with_tags([P("q", "1")]).matches(&event("Z", &[("q", "1")])));
    }

    #[test]
    fn a_query_matches_when_any_item_does_and_all_matches_everything() {
        let q = Query::from(QueryItem::of_types(["A"])).or(QueryItem::with_tags([P("k", "v")]));
        assert!(q.matches(&event("A", &[])));
        assert!(q.matches(&event("B", &[("k", "v")])));
        assert!(!q.matches(&event("B", &[("k", "w")])));
        assert!(Query::all().matches(&event("anything", &[])));
        assert!(!Query::from_items([]).matches(&event("anything", &[])));
    }
}
