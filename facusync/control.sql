-- Every statement on sync_control, by name (facusync/control.py runs them; like
-- procrastinate's sql/queries.sql). sync_control has one row, id = 1: the consumer's durable
-- low-water watermark, the newest committed version, the last batch's bookkeeping and the
-- time zone the stored source times are in. Parameters are psycopg2's %(name)s.

-- name: exists
SELECT to_regclass('sync_control') IS NOT NULL;

-- name: lock_row
-- Taken before reading the producer's watermark (see Sink's capped low-water mark).
SELECT 1 FROM sync_control WHERE id = 1 FOR UPDATE;

-- name: record_batch
-- In the batch's own transaction; no row when the stored times moved to another zone.
-- newest_version never passes now() by more than a minute: a row dated
-- 9999-12-31 would otherwise pin the lag at zero for good (and, west of UTC, be a year 10000
-- that Python cannot read back). The slack leaves ordinary skew and datetime's rounding alone.
-- CASE, not LEAST: LEAST skips NULLs, and would invent a newest version of now() + 1 minute
-- before any row is committed (or after a batch whose every row was dead-lettered).
UPDATE sync_control SET
 watermark = GREATEST(watermark, %(low_water)s::timestamp),
 newest_version = CASE
   WHEN GREATEST(newest_version, (%(newest)s::timestamp AT TIME ZONE %(zone)s))
        > now() + interval '60 seconds' THEN now() + interval '60 seconds'
   ELSE GREATEST(newest_version, (%(newest)s::timestamp AT TIME ZONE %(zone)s)) END,
 last_commit_at = now(), last_consumer = %(consumer)s, last_batch_size = %(size)s,
 last_inserted = %(inserted)s, last_updated = %(updated)s, last_unchanged = %(unchanged)s,
 last_deleted = %(deleted)s, last_dead = %(dead)s
 WHERE id = 1 AND source_timezone = %(zone)s
 RETURNING extract(epoch FROM newest_version);

-- name: raise_watermark
UPDATE sync_control SET watermark = GREATEST(watermark, %(mark)s::timestamp)
 WHERE id = 1 AND watermark IS DISTINCT FROM GREATEST(watermark, %(mark)s::timestamp);

-- name: lower_watermark
-- An empty watermark (nothing committed yet) stays empty: LEAST skips NULLs, and would claim
-- that everything up to the mark is in PostgreSQL while the first load is still queued.
UPDATE sync_control SET watermark = LEAST(watermark, %(mark)s)
 WHERE id = 1 AND watermark IS NOT NULL;

-- name: watermark
SELECT watermark FROM sync_control WHERE id = 1;

-- name: newest_version
-- Capped: a value stored by a version that did not cap it yet (as record_batch does); NULL
-- (no row committed yet) stays NULL.
SELECT CASE WHEN newest_version > now() + interval '60 seconds'
            THEN now() + interval '60 seconds' ELSE newest_version END
 FROM sync_control WHERE id = 1;

-- name: zone
SELECT source_timezone FROM sync_control WHERE id = 1;

-- name: zone_any_schema
-- to_jsonb: also before migration 005 added the column.
SELECT to_jsonb(s) ->> 'source_timezone' FROM sync_control s WHERE id = 1;

-- name: record_zone
UPDATE sync_control SET source_timezone = %(zone)s
 WHERE id = 1 AND source_timezone IS NOT DISTINCT FROM %(recorded)s;

-- name: lock_for_conversion
-- Every consumer batch ends by updating sync_control, checking the zone: holding this lock,
-- none can commit a row converted with the old zone. (The sync role may lock sync_control;
-- datos_vista it may only update by column.)
LOCK TABLE sync_control IN SHARE ROW EXCLUSIVE MODE;

-- name: zone_for_update
SELECT source_timezone FROM sync_control WHERE id = 1 FOR UPDATE;

-- name: convert_zone
UPDATE sync_control SET source_timezone = %(new)s,
 newest_version = (newest_version AT TIME ZONE %(old)s) AT TIME ZONE %(new)s WHERE id = 1;

-- name: status
-- newest capped as in newest_version above.
SELECT watermark, newest, last_commit_at, last_consumer, extract(epoch FROM now() - newest),
 extract(epoch FROM now() - last_commit_at)
 FROM (SELECT *, CASE WHEN newest_version > now() + interval '60 seconds'
                      THEN now() + interval '60 seconds' ELSE newest_version END AS newest
        FROM sync_control WHERE id = 1) AS s;
