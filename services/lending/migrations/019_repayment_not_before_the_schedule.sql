-- A repayment dated before the loan's schedule was last rebuilt (a later tranche, a
-- reschedule) is refused with BEFORE_SCHEDULE_REVISION. Recorded after the rebuild but
-- dated before it, such a payment was counted against a schedule that did not yet
-- include it: 450.00 AZN paid on a 300.00 AZN loan as it stood that day (outstanding
-- -150.00 AZN as of the payment), or a loan current by its figures while its schedule
-- said three instalments overdue. The latest revision is read once, for the check and
-- for the answer.
CREATE OR REPLACE FUNCTION lending_record_repayment(
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text)
RETURNS TABLE (outcome text, state text, outstanding bigint, first_disbursed_on date,
    repaid_against_revision bigint, due_dates date[], cumulative_minor bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_loan loans%ROWTYPE;
    v_pos loan_positions%ROWTYPE;
    v_rev schedule_revisions%ROWTYPE;
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
    SELECT * INTO v_rev FROM schedule_revisions r WHERE r.loan_id = p_loan_id
    ORDER BY r.revision DESC LIMIT 1;
    IF p_paid_on < v_rev.effective_date THEN
        RETURN QUERY SELECT 'BEFORE_SCHEDULE_REVISION', v_loan.state, v_outstanding,
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
        v_pos.repaid - v_rev.base_repaid_minor, v_rev.due_dates, v_rev.cumulative_minor;
END $$;
