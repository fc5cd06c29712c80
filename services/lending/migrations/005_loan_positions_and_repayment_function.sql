-- Per-loan positions: a projection of the ledger, maintained by the database itself in
-- the same transaction as every posting (a statement trigger on postings), never written
-- by the service. Postings stay the source of truth and stay append-only; this table is
-- derived data that can be rebuilt from them at any time (see loan_positions_rebuild).
-- The portfolio report reads one row per loan whose latest posting is on or before the
-- report date, and falls back to the postings for the others.
CREATE TABLE loan_positions (
    loan_id            text PRIMARY KEY REFERENCES loans (loan_id),
    disbursed          bigint NOT NULL,
    repaid             bigint NOT NULL,
    written_off        bigint NOT NULL,
    recovered          bigint NOT NULL,
    last_value_date    date NOT NULL,
    first_disbursed_on date
);

-- Only the ledger trigger may change a position (it runs at trigger depth >= 2 here).
CREATE FUNCTION loan_positions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 AND current_setting('lending.rebuilding_positions', true)
            IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'loan_positions is derived from postings: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER loan_positions_guard BEFORE INSERT OR UPDATE OR DELETE ON loan_positions
    FOR EACH ROW EXECUTE FUNCTION loan_positions_guard();

CREATE FUNCTION loan_positions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO loan_positions AS lp (loan_id, disbursed, repaid, written_off, recovered,
        last_value_date, first_disbursed_on)
    SELECT n.loan_id,
        coalesce(sum(n.amount_minor) FILTER (
            WHERE n.account = 'LOANS_RECEIVABLE' AND n.kind = 'DISBURSEMENT'), 0),
        coalesce(-sum(n.amount_minor) FILTER (
            WHERE n.account = 'LOANS_RECEIVABLE'
              AND n.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0),
        coalesce(-sum(n.amount_minor) FILTER (
            WHERE n.account = 'LOANS_RECEIVABLE' AND n.kind = 'WRITE_OFF'), 0),
        coalesce(-sum(n.amount_minor) FILTER (WHERE n.account = 'RECOVERY_INCOME'), 0),
        max(n.value_date),
        min(n.value_date) FILTER (WHERE n.kind = 'DISBURSEMENT')
    FROM new_postings n
    WHERE n.loan_id IS NOT NULL AND n.account IN ('LOANS_RECEIVABLE', 'RECOVERY_INCOME')
    GROUP BY n.loan_id
    ON CONFLICT (loan_id) DO UPDATE SET
        disbursed = lp.disbursed + EXCLUDED.disbursed,
        repaid = lp.repaid + EXCLUDED.repaid,
        written_off = lp.written_off + EXCLUDED.written_off,
        recovered = lp.recovered + EXCLUDED.recovered,
        last_value_date = greatest(lp.last_value_date, EXCLUDED.last_value_date),
        first_disbursed_on = least(lp.first_disbursed_on, EXCLUDED.first_disbursed_on);
    RETURN NULL;
END $$;
CREATE TRIGGER postings_positions AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION loan_positions_apply();

-- Rebuild every position from the postings (after a restore, or to check the projection:
-- compare the table before and after).
CREATE FUNCTION loan_positions_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lending.rebuilding_positions', 'on', true);
    DELETE FROM loan_positions;
    INSERT INTO loan_positions (loan_id, disbursed, repaid, written_off, recovered,
        last_value_date, first_disbursed_on)
    SELECT p.loan_id,
        coalesce(sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'DISBURSEMENT'), 0),
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE'
              AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0),
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'WRITE_OFF'), 0),
        coalesce(-sum(p.amount_minor) FILTER (WHERE p.account = 'RECOVERY_INCOME'), 0),
        max(p.value_date),
        min(p.value_date) FILTER (WHERE p.kind = 'DISBURSEMENT')
    FROM postings p
    WHERE p.loan_id IS NOT NULL AND p.account IN ('LOANS_RECEIVABLE', 'RECOVERY_INCOME')
    GROUP BY p.loan_id;
    PERFORM set_config('lending.rebuilding_positions', 'off', true);
END $$;
SELECT loan_positions_rebuild();

CREATE INDEX loan_positions_after ON loan_positions (last_value_date);

-- RecordRepayment of an ACTIVE loan in one round trip: lock the loan, check it, post the
-- balanced transaction and close the loan on its last qəpik. Refusals come back as an
-- outcome (nothing written) for the service to turn into its gRPC error; a written-off
-- loan comes back as WRITTEN_OFF for the service's recovery path.
CREATE FUNCTION lending_record_repayment(
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text)
RETURNS TABLE (outcome text, state text, outstanding bigint, first_disbursed_on date,
    repaid_against_revision bigint, due_dates date[], cumulative_minor bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_loan loans%ROWTYPE;
    v_pos loan_positions%ROWTYPE;
    v_outstanding bigint;
BEGIN
    SELECT * INTO v_loan FROM loans l WHERE l.loan_id = p_loan_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'UNKNOWN_LOAN', NULL::text, NULL::bigint, NULL::date,
            NULL::bigint, NULL::date[], NULL::bigint[];
        RETURN;
    END IF;
    IF v_loan.state <> 'ACTIVE' THEN
        RETURN QUERY SELECT CASE v_loan.state WHEN 'CLOSED_WRITTEN_OFF' THEN 'WRITTEN_OFF'
            ELSE 'NOT_ACTIVE' END, v_loan.state, NULL::bigint, NULL::date, NULL::bigint,
            NULL::date[], NULL::bigint[];
        RETURN;
    END IF;
    -- A fresh snapshot after the lock: the balances include every earlier commit.
    SELECT * INTO v_pos FROM loan_positions lp WHERE lp.loan_id = p_loan_id;
    v_outstanding := coalesce(v_pos.disbursed - v_pos.repaid - v_pos.written_off, 0);
    IF v_pos.first_disbursed_on IS NOT NULL AND p_paid_on < v_pos.first_disbursed_on THEN
        RETURN QUERY SELECT 'BEFORE_DISBURSEMENT', v_loan.state, v_outstanding,
            v_pos.first_disbursed_on, NULL::bigint, NULL::date[], NULL::bigint[];
        RETURN;
    END IF;
    IF p_amount > v_outstanding THEN
        RETURN QUERY SELECT 'OVERPAYMENT', v_loan.state, v_outstanding,
            v_pos.first_disbursed_on, NULL::bigint, NULL::date[], NULL::bigint[];
        RETURN;
    END IF;
    INSERT INTO ledger_transactions (transaction_id, fund_id, loan_id, kind, value_date,
        recorded_by, memo)
    VALUES (p_transaction_id, v_loan.fund_id, p_loan_id, 'REPAYMENT', p_paid_on, p_recorded_by,
        p_memo);
    INSERT INTO postings (transaction_id, fund_id, account, loan_id, amount_minor, kind,
        value_date)
    VALUES (p_transaction_id, v_loan.fund_id, 'FUND_CASH', p_loan_id, p_amount, 'REPAYMENT',
            p_paid_on),
           (p_transaction_id, v_loan.fund_id, 'LOANS_RECEIVABLE', p_loan_id, -p_amount,
            'REPAYMENT', p_paid_on);
    IF p_amount = v_outstanding THEN
        UPDATE loans SET state = 'CLOSED_OBLIGATIONS_MET', updated_at = now()
        WHERE loan_id = p_loan_id;
        INSERT INTO loan_events (loan_id, from_state, to_state, actor, note)
        VALUES (p_loan_id, 'ACTIVE', 'CLOSED_OBLIGATIONS_MET', p_recorded_by, 'repaid in full');
    END IF;
    RETURN QUERY SELECT CASE WHEN p_amount = v_outstanding THEN 'CLOSED' ELSE 'OK' END,
        v_loan.state, v_outstanding, v_pos.first_disbursed_on,
        v_pos.repaid - r.base_repaid_minor, r.due_dates, r.cumulative_minor
    FROM schedule_revisions r WHERE r.loan_id = p_loan_id
    ORDER BY r.revision DESC LIMIT 1;
END $$;
