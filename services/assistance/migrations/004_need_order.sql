-- Needs are listed in the order they were recorded: `ord` is that order, and the page
-- token's key. Needs recorded before it are numbered by their creation time.
ALTER TABLE needs ADD COLUMN ord bigint;
UPDATE needs SET ord = o.n
FROM (SELECT need_id, row_number() OVER (ORDER BY created_at, need_id) AS n FROM needs) o
WHERE needs.need_id = o.need_id;
ALTER TABLE needs ALTER COLUMN ord SET NOT NULL;
ALTER TABLE needs ALTER COLUMN ord ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('needs', 'ord'), coalesce(max(ord), 0) + 1, false) FROM needs;
ALTER TABLE needs ADD CONSTRAINT needs_ord_unique UNIQUE (ord);
-- A survivor's needs in order; the (survivor_id, need_id) index served nothing.
DROP INDEX needs_by_survivor;
CREATE INDEX needs_by_survivor ON needs (survivor_id, ord);
