-- RecordRepayment's idempotency key and its effect in one round trip: claim the
-- request_id (services/common/idempotency.py, same statement and same order: key first,
-- then the loan's lock), then repay as lending_record_repayment does. A request_id
-- already claimed comes back as REPLAY with what was stored, nothing written; a
-- concurrent duplicate waits on the key until the first transaction ends, as before.
CREATE FUNCTION lending_record_repayment_once(
    p_request_id text, p_method text, p_payload_hash bytea,
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text)
RETURNS TABLE (outcome text, state text, outstanding bigint, first_disbursed_on date,
    repaid_against_revision bigint, due_dates date[], cumulative_minor bigint[],
    stored_method text, stored_payload_hash bytea, stored_response bytea)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys (request_id, method, payload_hash)
    VALUES (p_request_id, p_method, p_payload_hash)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'REPLAY'::text, NULL::text, NULL::bigint, NULL::date,
            NULL::bigint, NULL::date[], NULL::bigint[], k.method, k.payload_hash, k.response
        FROM idempotency_keys k WHERE k.request_id = p_request_id;
        RETURN;
    END IF;
    RETURN QUERY SELECT r.*, NULL::text, NULL::bytea, NULL::bytea
    FROM lending_record_repayment(p_loan_id, p_amount, p_paid_on, p_recorded_by, p_memo,
        p_transaction_id) r;
END $$;
