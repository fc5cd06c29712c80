-- loan_positions_rebuild() names its tables without their schema: called as
-- lending.loan_positions_rebuild() from a session whose search_path is the default (an
-- operator's psql after a restore), it found no loan_positions. It now runs in its own
-- schema whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION loan_positions_rebuild() SET search_path = %I',
        current_schema());
END $$;
