-- A repayment's answer shows the loan as of the payment's date, or as of the loan's
-- latest transaction when that is later, as every mutation's answer now does (the
-- service's _loan_after), and says which day that is (`as_of`). A payment dated before
-- others already recorded answered with the loan as it stood on its own day: one that
-- repaid the loan in full said CLOSED_OBLIGATIONS_MET with 900.00 AZN still outstanding
-- (the later payments not yet counted on that day).
CREATE OR REPLACE FUNCTION lending_repay_once(
    p_request_id text, p_method text, p_payload_hash bytea,
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text,
    -- the audit entry's columns, in audit_log's order (NULL subject: none to write)
    a_subject text, a_roles text[], a_method text, a_request_id text, a_resource_ids jsonb,
    a_code text, a_reason text, a_on_behalf_of text)
RETURNS TABLE (replayed boolean, stored_method text, stored_payload_hash bytea,
    answer bytea)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
    v record;
    v_answer bytea;
    v_as_of date;
BEGIN
    INSERT INTO idempotency_keys (request_id, method, payload_hash)
    VALUES (p_request_id, p_method, p_payload_hash)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT true, k.method, k.payload_hash, k.response
        FROM idempotency_keys k WHERE k.request_id = p_request_id;
        RETURN;
    END IF;
    SELECT * INTO r FROM lending_record_repayment(p_loan_id, p_amount, p_paid_on,
        p_recorded_by, p_memo, p_transaction_id);
    IF r.outcome IS DISTINCT FROM 'OK' AND r.outcome IS DISTINCT FROM 'CLOSED' THEN
        RAISE EXCEPTION USING ERRCODE = 'LR001', MESSAGE = r.outcome,
            DETAIL = json_build_object('state', r.state, 'outstanding', r.outstanding,
                'first_disbursed_on', r.first_disbursed_on)::text;
    END IF;
    -- A new statement: it sees the repayment just written. As of the payment's date, or
    -- the loan's latest transaction's when later (a payment recorded late).
    SELECT greatest(p_paid_on, lp.last_value_date) INTO v_as_of
    FROM loan_positions lp WHERE lp.loan_id = p_loan_id;
    SELECT * INTO v FROM lending_loan_view_one(v_as_of, p_loan_id);
    v_answer := convert_to(json_build_object(
        'transaction_id', p_transaction_id,
        'as_of', v_as_of,
        'repaid_against_revision', r.repaid_against_revision,
        'cumulative_minor', r.cumulative_minor,
        'loan', to_json(v.loan),
        'disbursed', v.disbursed, 'repaid', v.repaid, 'written_off', v.written_off,
        'recovered', v.recovered, 'outstanding', v.outstanding, 'dpd', v.dpd,
        'tranches', v.tranches,
        -- The day the loan closed, when this repayment closed it: the latest value date
        -- on its receivable among the transactions that stand (a payment dated before an
        -- earlier-recorded one closes the loan as of that later date, as GetLoan says).
        'close_date', CASE WHEN r.outcome = 'CLOSED' THEN lending_close_date(p_loan_id)
            END)::text, 'UTF8');
    UPDATE idempotency_keys SET response = v_answer WHERE request_id = p_request_id;
    IF a_subject IS NOT NULL THEN
        INSERT INTO audit_log (subject, roles, method, request_id, resource_ids, code, reason,
            on_behalf_of)
        VALUES (a_subject, a_roles, a_method, a_request_id, a_resource_ids, a_code, a_reason,
            a_on_behalf_of);
    END IF;
    RETURN QUERY SELECT false, NULL::text, NULL::bytea, v_answer;
END $$;
