-- Request ids are read in lower case from now on (services/common/interceptors.py): a
-- UUID names the same request whatever the case of its letters. Keys stored before in
-- capitals move to lower case, so a retry sent after the change finds its first answer.
-- Where the same request was recorded twice before (in two spellings), the lower-case key
-- (or the earliest) takes the lower-case name and the others keep theirs: both effects
-- stay on record, and a retry gets the first of them.
UPDATE idempotency_keys k SET request_id = lower(k.request_id)
FROM (SELECT DISTINCT ON (lower(request_id)) request_id
      FROM idempotency_keys
      WHERE request_id <> lower(request_id)
      ORDER BY lower(request_id), created_at, request_id) first_spelling
WHERE k.request_id = first_spelling.request_id
  AND NOT EXISTS (SELECT 1 FROM idempotency_keys o WHERE o.request_id = lower(k.request_id));
