-- A cheaper dcb_append: same signature, same answers (statuses 0..4, firsts, dups), same lock.
--
-- V3 decided every batch with one CTE that joins several unnested copies of the arrays (the
-- replay lookups, the replay comparison, the conditions, a window sum for the positions and three
-- ordered array_aggs). Measured on the project's machine it cost about 0.27 ms of server CPU for
-- one request of one event, against about 0.05 ms for the plain INSERTs of the same rows: a fixed
-- cost per call that the common shapes do not need. Replays (an event id already stored) are
-- rare: they happen only when an append is re-sent after a lost answer. So this version first
-- asks one indexed question, "is any of these ids stored?". Either way one statement finds the
-- requests whose condition matches (one direct probe when the batch's only condition item names
-- one tag, the most common shape). Only when an id is stored does V3's statement run, to tell
-- replays apart; otherwise every request is a fresh append, and a loop over the (few) requests
-- assigns positions.
-- Measured on the project's machine, interleaved call by call with V3 in one backend: half the
-- server time for one request of one event (0.11-0.18 ms against 0.21-0.34 ms), a quarter less
-- for a batch of 30 (as much as 60 single-row INSERTs). The per-event cost (the INSERTs and their
-- index entries) is V3's, so a batch of long chains gains little.
--
-- The batch's requests are independent of each other (the appender only batches requests whose
-- conditions match no event of an earlier one and that share no event id), so each request is
-- checked against the store alone, as in V3.

DROP FUNCTION dcb_append(
    int[], int[], uuid[], text[], text[], int[], int[], jsonb[],
    int[], bool[], bigint[], int[], text[], int[], int[], text[], int[], int[], uuid[]);

CREATE FUNCTION dcb_append(
    ev_req int[], ev_offset int[], ev_ids uuid[], ev_types text[], ev_tags text[],
    ev_tag_starts int[], ev_tag_counts int[], ev_payloads jsonb[],
    req_event_counts int[], req_conditional bool[], req_after bigint[],
    item_req int[], item_types text[], item_type_starts int[], item_type_counts int[],
    item_tags text[], item_tag_starts int[], item_tag_counts int[],
    req_append_ids uuid[],
    OUT statuses smallint[], OUT firsts bigint[], OUT dups uuid[]
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
    PERFORM pg_advisory_xact_lock(7166468893617058148);

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
END
$fn$;
