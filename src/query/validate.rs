//! Whether a query can be read or used as a condition: every item names something, its types
//! and tags obey the limits, and a read fits in one statement.

use std::collections::HashSet;

use super::Query;
use crate::limits::{Limits, ValidationError};
use crate::validate::{validate_tag, validate_type};

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
}
