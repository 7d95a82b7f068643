//! The seed's fluent filter as a typestate: only complete items can be finalized.
//!
//! ```
//! use dcb_runtime::{P, Query};
//! let book_or_reader = Query::matching()
//!     .any_event_type_of(["BookCreated", "BookBorrowed", "BookReturned"])
//!     .and_any_predicate_of([P("BookID", "b1"), P("ReaderID", "r1")])
//!     .finalize()?;
//! assert_eq!(book_or_reader.items().len(), 2);
//! # Ok::<(), dcb_runtime::ValidationError>(())
//! ```
//!
//! An item that names neither types nor predicates does not compile:
//!
//! ```compile_fail
//! let q = dcb_runtime::Query::matching().finalize();
//! ```
//!
//! Nor does naming the types twice, or adding predicates to an item that already has them:
//!
//! ```compile_fail
//! let q = dcb_runtime::Query::matching().any_event_type_of(["A"]).any_event_type_of(["B"]);
//! ```
//!
//! ```compile_fail
//! use dcb_runtime::{P, Query};
//! let q = Query::matching().any_predicate_of([P("a", "1")]).and_any_predicate_of([P("b", "2")]);
//! ```
//!
//! Nor can an empty item be followed by another one:
//!
//! ```compile_fail
//! let q = dcb_runtime::Query::matching().or_matching();
//! ```

use std::marker::PhantomData;

use super::validate::validate_query;
use super::{Query, QueryItem};
use crate::event::Tag;
use crate::limits::ValidationError;

/// State of an item that names nothing yet: it cannot be finalized.
#[derive(Debug)]
pub struct Empty;
/// State of an item that names event types and may still take predicates.
#[derive(Debug)]
pub struct Typed;
/// State of an item whose predicates are given: only `or_matching` or `finalize` remain.
#[derive(Debug)]
pub struct Complete;

/// A query being built, one item at a time; `S` says what the current item already names.
#[derive(Debug)]
#[must_use = "a filter does nothing until it is finalized"]
pub struct Matching<S> {
    done: Vec<QueryItem>,
    types: Vec<String>,
    /// Each set becomes one item (the predicates of a set are ANDed, sets are ORed).
    tag_sets: Vec<Vec<Tag>>,
    empty_list: bool,
    state: PhantomData<S>,
}

impl<S> Matching<S> {
    fn into_state<T>(self) -> Matching<T> {
        Matching {
            done: self.done,
            types: self.types,
            tag_sets: self.tag_sets,
            empty_list: self.empty_list,
            state: PhantomData,
        }
    }

    fn with_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self.empty_list |= self.types.is_empty();
        self
    }

    fn with_tag_sets(mut self, sets: Vec<Vec<Tag>>) -> Self {
        self.empty_list |= sets.is_empty() || sets.iter().any(Vec::is_empty);
        self.tag_sets = sets;
        self
    }
}

impl Matching<Empty> {
    pub(super) fn start(done: Vec<QueryItem>) -> Self {
        Matching {
            done,
            types: Vec::new(),
            tag_sets: Vec::new(),
            empty_list: false,
            state: PhantomData,
        }
    }

    /// Events of any of these types.
    pub fn any_event_type_of<I, T>(self, types: I) -> Matching<Typed>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.with_types(types).into_state()
    }

    /// Events carrying any one of these tags, whatever their type.
    pub fn any_predicate_of(self, tags: impl IntoIterator<Item = Tag>) -> Matching<Complete> {
        let sets = tags.into_iter().map(|t| vec![t]).collect();
        self.with_tag_sets(sets).into_state()
    }

    /// Events carrying all of these tags, whatever their type.
    pub fn all_predicates_of(self, tags: impl IntoIterator<Item = Tag>) -> Matching<Complete> {
        let set = tags.into_iter().collect();
        self.with_tag_sets(vec![set]).into_state()
    }
}

impl Matching<Typed> {
    /// ... that also carry any one of these tags.
    pub fn and_any_predicate_of(self, tags: impl IntoIterator<Item = Tag>) -> Matching<Complete> {
        let sets = tags.into_iter().map(|t| vec![t]).collect();
        self.with_tag_sets(sets).into_state()
    }

    /// ... that also carry all of these tags.
    pub fn and_all_predicates_of(self, tags: impl IntoIterator<Item = Tag>) -> Matching<Complete> {
        let set = tags.into_iter().collect();
        self.with_tag_sets(vec![set]).into_state()
    }
}

/// Methods of an item that names enough to stand on its own.
pub trait Finalizable {}
impl Finalizable for Typed {}
impl Finalizable for Complete {}

impl<S: Finalizable> Matching<S> {
    fn close_item(self) -> (Vec<QueryItem>, bool) {
        let Matching {
            mut done,
            types,
            tag_sets,
            empty_list,
            ..
        } = self;
        if tag_sets.is_empty() {
            done.push(QueryItem::new(types, []));
        } else {
            for set in tag_sets {
                done.push(QueryItem::new(types.iter().cloned(), set));
            }
        }
        (done, empty_list)
    }

    /// Closes this item; the next one is ORed with it.
    pub fn or_matching(self) -> Matching<Empty> {
        let (done, empty_list) = self.close_item();
        let mut next = Matching::start(done);
        next.empty_list = empty_list;
        next
    }

    /// The finished query.
    ///
    /// # Errors
    ///
    /// [`ValidationError::EmptyList`] when a list of types or predicates was empty, or any error
    /// of an invalid type or tag (see [`crate::Limits`]).
    pub fn finalize(self) -> Result<Query, ValidationError> {
        let (items, empty_list) = self.close_item();
        if empty_list {
            return Err(ValidationError::EmptyList);
        }
        let query = Query::from_items(items);
        validate_query(&query)?;
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;

    #[test]
    fn any_predicate_of_makes_one_item_per_predicate() {
        let q = Query::matching()
            .any_event_type_of(["A", "B"])
            .and_any_predicate_of([P("k", "1"), P("k", "2")])
            .or_matching()
            .all_predicates_of([P("x", "1"), P("y", "2")])
            .finalize()
            .unwrap();
        assert_eq!(
            q.items(),
            &[
                QueryItem::new(["A", "B"], [P("k", "1")]),
                QueryItem::new(["A", "B"], [P("k", "2")]),
                QueryItem::with_tags([P("x", "1"), P("y", "2")]),
            ]
        );
    }

    #[test]
    fn empty_lists_are_refused_instead_of_widening_the_query() {
        let e = Query::matching()
            .any_event_type_of(Vec::<String>::new())
            .and_any_predicate_of([P("k", "1")])
            .finalize();
        assert_eq!(e, Err(ValidationError::EmptyList));
        let e = Query::matching().any_predicate_of([]).finalize();
        assert_eq!(e, Err(ValidationError::EmptyList));
    }

    #[test]
    fn invalid_tags_are_refused_at_finalize() {
        let e = Query::matching()
            .any_predicate_of([P("a:b", "1")])
            .finalize();
        assert!(matches!(e, Err(ValidationError::TagKeyHasColon(_))));
    }
}
