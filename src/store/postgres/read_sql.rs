//! SQL for reads: one statement per query shape, so the head and the events come from one
//! snapshot, and each item is an index range scan starting at `after`.

use std::fmt::Write;

use tokio_postgres::types::ToSql;

use crate::event::Position;
use crate::query::Query;
use crate::store::ReadOptions;

/// A read statement and its parameters.
pub(super) struct ReadSql {
    pub(super) sql: String,
    after: i64,
    up_to: i64,
    limit: Option<i64>,
    /// Per item: its types and its tags written `key:value`.
    items: Vec<(Vec<String>, Vec<String>)>,
}

impl ReadSql {
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.after, &self.up_to, &self.limit];
        for (types, tags) in &self.items {
            if !types.is_empty() {
                params.push(types);
            }
            if let Some(first) = tags.first() {
                params.push(first);
            }
            if tags.len() > 1 {
                params.push(tags);
            }
        }
        params
    }
}

/// Builds the read. Parameters: $1 after, $2 up_to, $3 limit, then per item its types, its
/// first tag and its whole tag list, each only when the item uses it.
pub(super) fn build(query: &Query, options: &ReadOptions) -> ReadSql {
    let mut sql = String::from(
        "SELECT h.head, e.position, e.id, e.type, e.tags, e.payload, e.recorded_at \
         FROM (SELECT max(position) AS head FROM events WHERE position <= $2) h \
         LEFT JOIN LATERAL (SELECT ev.* FROM events ev WHERE ",
    );
    let mut items = Vec::new();
    if query.is_all() {
        sql.push_str("ev.position > $1 AND ev.position <= $2");
    } else {
        sql.push_str("ev.position IN (");
        let mut next = 4;
        for (n, item) in query.items().iter().enumerate() {
            if n > 0 {
                sql.push_str(" UNION ALL ");
            }
            let types: Vec<String> = item.types().to_vec();
            let tags: Vec<String> = item.tags().iter().map(ToString::to_string).collect();
            if tags.is_empty() {
                let _ = write!(
                    sql,
                    "SELECT position FROM events WHERE type = ANY(${next}) \
                     AND position > $1 AND position <= $2"
                );
                next += 1;
            } else {
                let mut item_sql = String::from(
                    "SELECT t.position FROM event_tags t WHERE t.position > $1 AND t.position <= $2",
                );
                if !types.is_empty() {
                    let _ = write!(item_sql, " AND t.type = ANY(${next})");
                    next += 1;
                }
                let _ = write!(item_sql, " AND t.tag = ${next}");
                next += 1;
                if tags.len() > 1 {
                    let _ = write!(
                        item_sql,
                        " AND EXISTS (SELECT 1 FROM events x WHERE x.position = t.position \
                         AND x.tags @> ${next})"
                    );
                    next += 1;
                }
                sql.push_str(&item_sql);
            }
            items.push((types, tags));
        }
        sql.push_str(") AND ev.position > $1 AND ev.position <= $2");
    }
    sql.push_str(if options.is_backwards() {
        " ORDER BY ev.position DESC LIMIT $3) e ON true"
    } else {
        " ORDER BY ev.position LIMIT $3) e ON true"
    });
    ReadSql {
        sql,
        after: options.after_position().map_or(0, Position::get),
        up_to: options.up_to_position().map_or(i64::MAX, Position::get),
        limit: options
            .max_events()
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        items,
    }
}
