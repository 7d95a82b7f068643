-- The DCB event store. Positions are assigned by dcb_append() while it holds one transaction-scoped
-- advisory lock, so they are gapless in practice and in commit order: a reader that has seen
-- position P has seen everything at or below P.

CREATE TABLE events (
    position    bigint      PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    type        text        NOT NULL,
    tags        text[]      NOT NULL,          -- 'key:value'
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Type-only query items and conditions: an index range scan per type.
CREATE INDEX events_type_position ON events (type, position);

-- One row per (event, tag). (tag, position) serves tag items with or without types as an ordered
-- range scan starting at the condition's `after`; `type` is carried in the index so typed items are
-- filtered without visiting the heap. Its cost depends on the boundary, not on the store's size.
CREATE TABLE event_tags (
    tag      text   NOT NULL,
    position bigint NOT NULL,
    type     text   NOT NULL,
    PRIMARY KEY (tag, position) INCLUDE (type)
);

-- Appends a batch of requests in one transaction, in order; each request is checked against the
-- store including the requests of this batch before it. Arrays are flattened: a request's events
-- are the next req_event_counts[r] entries of ev_*, an event's tags are ev_tags[start:start+count-1],
-- and likewise for condition items. An item with neither types nor tags stands for Query::all().
--
-- status per request: 0 appended, 1 condition failed, 2 already stored (idempotent replay:
-- first_position is the original), 3 an event id is stored with other content (dup_id says which).
CREATE FUNCTION dcb_append(
    ev_ids uuid[], ev_types text[], ev_tags text[], ev_tag_starts int[], ev_tag_counts int[],
    ev_payloads jsonb[],
    req_event_counts int[], req_conditional bool[], req_after bigint[], req_item_counts int[],
    item_types text[], item_type_starts int[], item_type_counts int[],
    item_tags text[], item_tag_starts int[], item_tag_counts int[]
) RETURNS TABLE (status smallint, first_position bigint, dup_id uuid)
LANGUAGE plpgsql AS $fn$
DECLARE
    head bigint;
    ev int := 1;   -- first event of the current request
    it int := 1;   -- first condition item of the current request
    n int;
    i int;
    after_pos bigint;
    conflict bool;
    stored int;
    stored_first bigint;
    want_types text[];
    want_tags text[];
BEGIN
    -- Serialises every writer of this store until commit: positions follow commit order and each
    -- condition below sees every event committed before it.
    PERFORM pg_advisory_xact_lock(7166468893617058148);
    SELECT coalesce(max(e.position), 0) INTO head FROM events e;

    FOR r IN 1 .. coalesce(array_length(req_event_counts, 1), 0) LOOP
        n := req_event_counts[r];
        status := 0;
        first_position := NULL;
        dup_id := NULL;

        -- Idempotency: the same events stored before, in the same order, are a replay.
        SELECT count(*), min(e.position) INTO stored, stored_first
        FROM events e WHERE e.id = ANY (ev_ids[ev : ev + n - 1]);
        IF stored > 0 THEN
            SELECT k.id INTO dup_id
            FROM unnest(ev_ids[ev : ev + n - 1], ev_types[ev : ev + n - 1],
                        ev_tag_starts[ev : ev + n - 1], ev_tag_counts[ev : ev + n - 1],
                        ev_payloads[ev : ev + n - 1]) WITH ORDINALITY
                   AS k(id, type, tag_start, tag_count, payload, ord)
            LEFT JOIN events e ON e.position = stored_first + k.ord - 1
            WHERE e.id IS DISTINCT FROM k.id
               OR e.type <> k.type
               OR e.tags <> ev_tags[k.tag_start : k.tag_start + k.tag_count - 1]
               OR e.payload <> k.payload
            ORDER BY k.ord
            LIMIT 1;
            IF stored = n AND dup_id IS NULL THEN
                status := 2;
                first_position := stored_first;
            ELSE
                status := 3;
                -- Name an id that is really stored.
                SELECT e.id INTO dup_id FROM events e
                WHERE e.id = ANY (ev_ids[ev : ev + n - 1]) ORDER BY e.position LIMIT 1;
            END IF;
        ELSIF req_conditional[r] THEN
            after_pos := coalesce(req_after[r], 0);
            conflict := false;
            FOR i IN it .. it + req_item_counts[r] - 1 LOOP
                want_types := item_types[item_type_starts[i] : item_type_starts[i] + item_type_counts[i] - 1];
                want_tags := item_tags[item_tag_starts[i] : item_tag_starts[i] + item_tag_counts[i] - 1];
                IF item_tag_counts[i] = 0 AND item_type_counts[i] = 0 THEN
                    conflict := head > after_pos;
                ELSIF item_tag_counts[i] = 0 THEN
                    conflict := EXISTS (
                        SELECT 1 FROM events e
                        WHERE e.type = ANY (want_types) AND e.position > after_pos);
                ELSE
                    conflict := EXISTS (
                        SELECT 1 FROM event_tags t
                        WHERE t.tag = want_tags[1] AND t.position > after_pos
                          AND (item_type_counts[i] = 0 OR t.type = ANY (want_types))
                          AND (item_tag_counts[i] = 1 OR EXISTS (
                                SELECT 1 FROM events e
                                WHERE e.position = t.position AND e.tags @> want_tags)));
                END IF;
                EXIT WHEN conflict;
            END LOOP;
            IF conflict THEN
                status := 1;
            END IF;
        END IF;

        IF status = 0 THEN
            INSERT INTO events (position, id, type, tags, payload)
            SELECT head + k, ev_ids[ev + k - 1], ev_types[ev + k - 1],
                   ev_tags[ev_tag_starts[ev + k - 1] : ev_tag_starts[ev + k - 1] + ev_tag_counts[ev + k - 1] - 1],
                   ev_payloads[ev + k - 1]
            FROM generate_series(1, n) AS k;
            INSERT INTO event_tags (tag, position, type)
            SELECT tg, head + k, ev_types[ev + k - 1]
            FROM generate_series(1, n) AS k,
                 unnest(ev_tags[ev_tag_starts[ev + k - 1] : ev_tag_starts[ev + k - 1] + ev_tag_counts[ev + k - 1] - 1]) AS tg;
            first_position := head + 1;
            head := head + n;
        END IF;

        RETURN NEXT;
        ev := ev + n;
        it := it + req_item_counts[r];
    END LOOP;
END
$fn$;
