-- A revision records the loan's last posting when it was made (postings_until): a
-- revision it replaced is read as it stood then, with the postings up to there and none
-- recorded since. last_posting_id says which payments a revision counts in its base, and
-- a revision owing a bounced payment again copies it from the one it replaces, so it is
-- older than the reversal made with it: read by it, the replaced revision showed the
-- bounced payment as paid. Revisions made before keep none, and are read as before.
ALTER TABLE schedule_revisions ADD COLUMN postings_until bigint;
