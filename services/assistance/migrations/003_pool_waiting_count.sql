-- The pool row carries how many requests wait for it, so one UPDATE of that row (which
-- locks it) can decide "reserve or join the waitlist" on its latest version. Keeping the
-- lock to that one statement and the commit is what lets reservations run concurrently.
ALTER TABLE capacity_pools ADD COLUMN waiting integer NOT NULL DEFAULT 0 CHECK (waiting >= 0);
UPDATE capacity_pools p SET waiting = (SELECT count(*) FROM waitlist w WHERE w.pool_id = p.pool_id);
