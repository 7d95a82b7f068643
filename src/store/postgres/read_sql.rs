//! SQL for reads: one statement per query shape, so the head and the events come from one
//! snapshot. Each item becomes index range scans in position order that stop at the limit, so a
//! limited read costs O(items x limit x log n) however long the boundary's history.

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
    params: Vec<Param>,
}

/// Item parameters, in the order of their placeholders.
enum Param {
    Text(String),
    TextArray(Vec<String>),
}

impl ReadSql {
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.after, &self.up_to, &self.limit];
        params.extend(self.params.iter().map(|p| match p {
            Param::Text(t) => t as &(dyn ToSql + Sync),
            Param::TextArray(a) => a as &(dyn ToSql + Sync),
        }));
        params
    }
}

/// Builds the read. Parameters: $1 after, $2 up_to, $3 limit (NULL: none), then the items'.
pub(super) fn build(query: &Query, options: &ReadOptions) -> ReadSql {
    let order = if options.is_backwards() {
        "DESC"
    } else {
        "ASC"
    };
    let mut sql = String::from(
        "SELECT h.head, e.position, e.id, e.type, e.tags, e.payload, e.recorded_at \
         FROM (SELECT max(position) AS head FROM events WHERE position <= $2) h \
         LEFT JOIN LATERAL (",
    );
    let mut params = Vec::new();
    if query.is_all() {
        sql.push_str("SELECT ev.* FROM events ev WHERE ev.position > $1 AND ev.position <= $2");
    } else {
        // The union of each scan's first `limit` matches holds the query's first `limit`.
        let mut scans = Vec::new();
        // Items of one tag and the same types share one scan (`tag = ANY`): a chain of commands
        // on many boundaries reads in a statement whose shape does not grow with the chain.
        let mut single_tag: Vec<(&[String], Vec<String>)> = Vec::new();
        for item in query.items() {
            let tags: Vec<String> = item.tags().iter().map(ToString::to_string).collect();
            if tags.len() == 1 {
                match single_tag
                    .iter_mut()
                    .find(|(types, _)| *types == item.types())
                {
                    Some((_, group)) => group.extend(tags),
                    None => single_tag.push((item.types(), tags)),
                }
                continue;
            }
            let Some(first_tag) = tags.first().cloned() else {
                // Type-only: one ordered scan of (type, position) per type.
                for t in item.types() {
                    params.push(Param::Text(t.clone()));
                    scans.push(format!(
                        "(SELECT position FROM events WHERE type = ${} \
                         AND position > $1 AND position <= $2 ORDER BY position {order} LIMIT $3)",
                        params.len() + 3
                    ));
                }
                continue;
            };
            params.push(Param::Text(first_tag));
            let mut scan = format!(
                "(SELECT t.position FROM event_tags t WHERE t.tag = ${} \
                 AND t.position > $1 AND t.position <= $2",
                params.len() + 3
            );
            if !item.types().is_empty() {
                params.push(Param::TextArray(item.types().to_vec()));
                let _ = write!(scan, " AND t.type = ANY(${})", params.len() + 3);
            }
            params.push(Param::TextArray(tags));
            let _ = write!(
                scan,
                " AND EXISTS (SELECT 1 FROM events x WHERE x.position = t.position \
                 AND x.tags @> ${}) ORDER BY t.position {order} LIMIT $3)",
                params.len() + 3
            );
            scans.push(scan);
        }
        for (types, mut tags) in single_tag {
            // One tag keeps `=`, an ordered index scan that stops at the limit.
            let mut scan = if tags.len() == 1 {
                params.push(Param::Text(tags.remove(0)));
                format!(
                    "(SELECT t.position FROM event_tags t WHERE t.tag = ${}",
                    params.len() + 3
                )
            } else {
                tags.dedup();
                params.push(Param::TextArray(tags));
                // An event carrying several of these tags has a row for each: count it once.
                format!(
                    "(SELECT DISTINCT t.position FROM event_tags t WHERE t.tag = ANY(${})",
                    params.len() + 3
                )
            };
            scan.push_str(" AND t.position > $1 AND t.position <= $2");
            if !types.is_empty() {
                params.push(Param::TextArray(types.to_vec()));
                let _ = write!(scan, " AND t.type = ANY(${})", params.len() + 3);
            }
            let _ = write!(scan, " ORDER BY t.position {order} LIMIT $3)");
            scans.push(scan);
        }
        let _ = write!(
            sql,
            "SELECT ev.* FROM ({}) m \
             CROSS JOIN LATERAL (SELECT * FROM events x WHERE x.position = m.position) ev",
            scans.join(" UNION ")
        );
    }
    let _ = write!(sql, " ORDER BY ev.position {order} LIMIT $3) e ON true");
    ReadSql {
        sql,
        after: options.after_position().map_or(0, Position::get),
        up_to: options.up_to_position().map_or(i64::MAX, Position::get),
        limit: options
            .max_events()
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;
    use crate::query::QueryItem;

    #[test]
    fn every_value_is_a_parameter_never_sql_text() {
        let hostile = "x'); DROP TABLE events; --";
        let query = Query::from_items([
            QueryItem::of_types([hostile, "T2"]),
            QueryItem::with_tags([P("k", hostile)]),
            QueryItem::with_tags([P("j", hostile)]),
            QueryItem::new([hostile], [P("k", "1")]),
            QueryItem::new([hostile], [P("a", hostile), P("b", hostile)]),
        ]);
        let options = ReadOptions::default();
        for options in [
            options,
            options
                .after(Position::new(7))
                .up_to(Position::new(9))
                .limit(3)
                .backwards(),
        ] {
            for query in [&query, &Query::all()] {
                let built = build(query, &options);
                // No literal at all: every value, the positions and the limit included, is bound.
                assert!(!built.sql.contains('\''), "{}", built.sql);
                assert!(!built.sql.contains("DROP"), "{}", built.sql);
                // Every parameter has its placeholder, and no placeholder lacks a parameter.
                let n = built.params().len();
                for i in 1..=n {
                    assert!(built.sql.contains(&format!("${i}")), "${i}: {}", built.sql);
                }
                assert!(!built.sql.contains(&format!("${}", n + 1)), "{}", built.sql);
                if !query.is_all() {
                    assert!(format!("{:?}", built.params()).contains("DROP TABLE"));
                }
            }
        }
    }
}
