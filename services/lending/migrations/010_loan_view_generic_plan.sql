-- The single-loan view inside lending_repay_once is planned once per connection and then
-- reused: planning it costs about 0.8 ms, running it about 0.1 ms. PostgreSQL's own
-- choice between a custom and the generic plan flips back to planning every call
-- whenever its estimates move (as postings grow and statistics refresh); every plan of it
-- reads one loan by its key, so the generic plan is always the right one.
ALTER FUNCTION lending_loan_view_one(date, text) SET plan_cache_mode = force_generic_plan;
