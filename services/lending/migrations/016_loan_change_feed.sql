-- The loan change feed (ListLoanChanges): a row per loan and statement that changed it,
-- written by triggers, so every path that changes a loan, now or later, feeds it. The
-- journeys hear through it of money moved by any client (a cashier's app, a bank file),
-- not only by the CLI.
--
-- Rows are read in the order of the transaction that wrote them (xid8, which never wraps),
-- and only those of transactions older than every one still running: a change committed
-- late by a transaction that began early is never passed over by a reader's cursor.
CREATE TABLE loan_changes (
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    change_id  bigint GENERATED ALWAYS AS IDENTITY,
    loan_id    text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('STATE', 'DISBURSEMENT', 'REPAYMENT',
                   'REPAYMENT_REVERSAL', 'WRITE_OFF', 'RECOVERY', 'RECOVERY_REVERSAL',
                   'SCHEDULE', 'DELINQUENCY_PAUSE', 'WRITE_OFF_PROPOSAL',
                   'WRITE_OFF_WITHDRAWAL')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, change_id)
);

-- Money: the ledger transaction's own kind (capital has no loan).
CREATE FUNCTION loan_changes_from_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loan_changes (loan_id, kind)
    SELECT DISTINCT loan_id, kind FROM changed WHERE loan_id IS NOT NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_transactions_feed AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION loan_changes_from_ledger();

-- Everything else: the kind named by the trigger.
CREATE FUNCTION loan_changes_of_kind() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loan_changes (loan_id, kind) SELECT DISTINCT loan_id, TG_ARGV[0] FROM changed;
    RETURN NULL;
END $$;

-- A schedule revision made by a disbursement is part of it (the DISBURSEMENT, written
-- first in the same transaction); one made by a reschedule is a change of its own.
CREATE FUNCTION loan_changes_from_schedules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loan_changes (loan_id, kind)
    SELECT DISTINCT c.loan_id, 'SCHEDULE' FROM changed c
    WHERE NOT EXISTS (SELECT 1 FROM loan_changes d
                      WHERE d.txid = pg_current_xact_id() AND d.loan_id = c.loan_id
                        AND d.kind = 'DISBURSEMENT');
    RETURN NULL;
END $$;
CREATE TRIGGER schedule_revisions_feed AFTER INSERT ON schedule_revisions
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION loan_changes_from_schedules();

DO $$
DECLARE
    feed text[];
BEGIN
    FOREACH feed SLICE 1 IN ARRAY ARRAY[
        ['loan_events', 'STATE'],
        ['delinquency_pauses', 'DELINQUENCY_PAUSE'],
        ['write_off_proposals', 'WRITE_OFF_PROPOSAL'],
        ['write_off_withdrawals', 'WRITE_OFF_WITHDRAWAL']]
    LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS changed '
                       'FOR EACH STATEMENT EXECUTE FUNCTION loan_changes_of_kind(%L)',
                       feed[1] || '_feed', feed[1], feed[2]);
    END LOOP;
END $$;
