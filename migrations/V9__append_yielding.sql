-- dcb_append releases the writers' lock before the WAL flush when other writers queue for it.
--
-- A transaction's locks are released after its commit has flushed the WAL, so every writer of the
-- store waited for the disk sync of the one before it: with several processes (one appender each)
-- their batches queued through one flush after another. dcb_append now first tries the writers'
-- lock without waiting and answers whether it `waited`. A batch that waited, or whose caller asks
-- it to `yield_lock` (its appender saw other writers lately), commits with `synchronous_commit`
-- off for its transaction only, so the lock is released as soon as the commit record is written;
-- the caller must then answer no one before a later synchronous commit has flushed past it (the
-- store's durability barrier, src/store/postgres/durability.rs). Otherwise (one process, or a
-- quiet moment) the batch commits synchronously, as before. Everything else is V5's.
--
-- (A PL/pgSQL wrapper calling V5's function did the same, but measured in two runs of
-- `disjoint --processes 4` it cost 0.146-0.161 ms of server CPU per decision against 0.108-0.130
-- for the same change without it: so this is V5's body with the lock changed.)

DROP FUNCTION dcb_append(
    int[], int[], uuid[], text[], text[], int[], int[], jsonb[],
    int[], bool[], bigint[], int[], text[], int[], int[], text[], int[], int[], uuid[]);

CREATE FUNCTION dcb_append(
    ev_req int[], ev_offset int[], ev_ids uuid[], ev_types text[], ev_tags text[],
    ev_tag_starts int[], ev_tag_counts int[], ev_payloads jsonb[],
    req_event_counts int[], req_conditional bool[], req_after bigint[],
    item_req int[], item_types text[], item_type_starts int[], item_type_counts int[],
    item_tags text[], item_tag_starts int[], item_tag_counts int[],
    req_append_ids uuid[], yield_lock bool,
    OUT statuses smallint[], OUT firsts bigint[], OUT dups uuid[], OUT waited bool
)
LANGUAGE plpgsql
-- Every statement is meant to be index lookups driven by the (small) arrays: plan once, not per
-- call, and never let a plan made while the tables were small freeze a scan of the whole table
-- into the cache (the planner trap: a plan whose cost grows with the store).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
-- A condition's probe is an EXISTS that needs one index entry: a bitmap scan (what the generic
-- plan picked for `tag = $1 AND position > $2`) first collects every match, then visits the heap;
-- the (tag, position) INCLUDE (type) key answers it from the index alone.
SET enable_bitmapscan = off
AS $fn$
DECLARE
    stored_head bigint;
    replay bool;
    matched int[];
BEGIN
    -- Serialises every writer of this store until commit: positions follow commit order and each
    -- condition below sees every event committed before it (each statement below takes its
    -- snapshot after the lock is granted).
    waited := NOT pg_try_advisory_xact_lock(7166468893617058148);
    IF waited THEN
        PERFORM pg_advisory_xact_lock(7166468893617058148);
    END IF;

    -- The head, and whether any event is stored already, in one statement.
    SELECT coalesce(max(e.position), 0),
           EXISTS (SELECT 1 FROM events x WHERE x.id = ANY (ev_ids))
    INTO stored_head, replay
    FROM events e;

    -- The requests with a condition that matches (an item naming nothing is Query::all()), for
    -- both paths below. Every item is an index range scan starting at the request's `after`.
    IF cardinality(item_req) = 1 AND item_tag_counts[1] = 1 THEN
        -- The batch's only condition item names one tag (one entity's boundary, the most
        -- common shape): probed directly, without unnesting the item arrays.
        IF EXISTS (
            SELECT 1 FROM event_tags t
            WHERE t.tag = item_tags[item_tag_starts[1]]
              AND t.position > coalesce(req_after[item_req[1]], 0)
              AND (item_type_counts[1] = 0 OR t.type = ANY (item_types[item_type_starts[1]
                   : item_type_starts[1] + item_type_counts[1] - 1]))) THEN
            matched := ARRAY[item_req[1]];
        END IF;
    ELSE
        SELECT array_agg(it.r) INTO matched
        FROM unnest(item_req, item_type_starts, item_type_counts, item_tag_starts, item_tag_counts)
             AS it(r, ts, tc, gs, gc)
        WHERE CASE
            WHEN gc = 0 AND tc = 0 THEN stored_head > coalesce(req_after[it.r], 0)
            WHEN gc = 0 THEN EXISTS (
                SELECT 1 FROM events e
                WHERE e.type = ANY (item_types[ts : ts + tc - 1])
                  AND e.position > coalesce(req_after[it.r], 0))
            ELSE EXISTS (
                SELECT 1 FROM event_tags t
                WHERE t.tag = item_tags[gs]
                  AND t.position > coalesce(req_after[it.r], 0)
                  AND (tc = 0 OR t.type = ANY (item_types[ts : ts + tc - 1]))
                  AND (gc = 1 OR EXISTS (
                        SELECT 1 FROM events x
                        WHERE x.position = t.position
                          AND x.tags @> item_tags[gs : gs + gc - 1])))
        END;
    END IF;

    IF replay THEN
        -- Some event is stored already: a replay, a re-send or a duplicate id. V3's statement
        -- tells them apart (its conditions are the ones found above).
        WITH stored AS (
            SELECT v.r, count(*) AS found, min(e.position) AS first_found
            FROM unnest(ev_ids, ev_req) AS v(id, r)
            CROSS JOIN LATERAL (SELECT x.position FROM events x WHERE x.id = v.id) AS e
            GROUP BY v.r
        ), mismatched AS (
            -- A replay must be the same events, in the same order, with the same content.
            SELECT DISTINCT v.r
            FROM unnest(ev_req, ev_offset, ev_ids, ev_types, ev_tag_starts, ev_tag_counts,
                        ev_payloads) AS v(r, off, id, type, ts, tc, payload)
            JOIN stored s ON s.r = v.r
            LEFT JOIN LATERAL (
                SELECT x.id, x.type, x.tags, x.payload FROM events x
                WHERE x.position = s.first_found + v.off) AS e ON true
            WHERE e.id IS DISTINCT FROM v.id
               OR e.type <> v.type
               OR e.tags <> ev_tags[v.ts : v.ts + v.tc - 1]
               -- jsonb equality says 1 = 1.0; the text form keeps what was sent.
               OR e.payload::text <> v.payload::text
        ), conflicting AS (
            -- A request with several matching items is one conflict.
            SELECT DISTINCT unnest(matched) AS r
        ), decided AS (
            SELECT q.r, q.n, s.first_found,
                   CASE WHEN s.r IS NOT NULL THEN
                            CASE WHEN s.found <> q.n OR m.r IS NOT NULL THEN 3
                                 WHEN q.append_id IS NOT NULL AND a.append_id = q.append_id THEN 4
                                 ELSE 2
                            END
                        WHEN q.conditional AND c.r IS NOT NULL THEN 1
                        ELSE 0
                   END::smallint AS st
            FROM unnest(req_event_counts, req_conditional, req_append_ids) WITH ORDINALITY
                 AS q(n, conditional, append_id, r)
            LEFT JOIN stored s ON s.r = q.r
            LEFT JOIN mismatched m ON m.r = q.r
            LEFT JOIN conflicting c ON c.r = q.r
            -- Who stored a replayed request's events: a probe by position, for replays only.
            LEFT JOIN LATERAL (
                SELECT x.append_id FROM events x WHERE x.position = s.first_found) AS a ON true
        ), placed AS (
            SELECT d.r, d.st,
                   CASE d.st
                       WHEN 0 THEN stored_head - d.n + 1
                            + sum(CASE WHEN d.st = 0 THEN d.n ELSE 0 END) OVER (ORDER BY d.r)
                       WHEN 2 THEN d.first_found
                       WHEN 4 THEN d.first_found
                   END AS first,
                   CASE WHEN d.st = 3 THEN
                       (SELECT e.id FROM events e WHERE e.position = d.first_found)
                   END AS dup
            FROM decided d
        )
        SELECT array_agg(p.st ORDER BY p.r), array_agg(p.first ORDER BY p.r),
               array_agg(p.dup ORDER BY p.r)
        INTO statuses, firsts, dups
        FROM placed p;
    ELSE
        -- No event is stored: each request either fails its condition (1) or is appended (0).
        -- Positions in request order, without a statement: a batch holds tens of requests.
        statuses := array_fill(0::smallint, ARRAY[cardinality(req_event_counts)]);
        firsts := array_fill(NULL::bigint, ARRAY[cardinality(req_event_counts)]);
        dups := array_fill(NULL::uuid, ARRAY[cardinality(req_event_counts)]);
        FOR r IN 1 .. cardinality(req_event_counts) LOOP
            IF req_conditional[r] AND r = ANY (matched) THEN
                statuses[r] := 1;
            ELSE
                firsts[r] := stored_head + 1;
                stored_head := stored_head + req_event_counts[r];
            END IF;
        END LOOP;
    END IF;

    WITH stored_events AS (
        INSERT INTO events (position, id, type, tags, payload, append_id)
        SELECT firsts[v.r] + v.off, v.id, v.type, ev_tags[v.ts : v.ts + v.tc - 1], v.payload,
               req_append_ids[v.r]
        FROM unnest(ev_req, ev_offset, ev_ids, ev_types, ev_tag_starts, ev_tag_counts, ev_payloads)
             AS v(r, off, id, type, ts, tc, payload)
        WHERE statuses[v.r] = 0
        RETURNING position, type, tags
    )
    INSERT INTO event_tags (tag, position, type)
    SELECT unnest(s.tags), s.position, s.type FROM stored_events s;

    -- A SET LOCAL of a variable the function's own SET clauses do not name lasts until the
    -- transaction ends, its commit included.
    IF yield_lock OR waited THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END
$fn$;
