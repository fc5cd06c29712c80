-- RecordRepayment calls that arrive together go to the database as one statement, one
-- transaction and one commit (services/common/group_commit.py): each repayment runs
-- lending_repay_once (migration 009) in its own subtransaction, so a refused repayment
-- (LR001) leaves nothing behind, its request_id included, and the others commit.
--
-- One row per repayment, by its position (1-based) in the arrays:
--   outcome 'OK': repaid, `answer` as lending_repay_once stores it;
--   outcome 'REPLAY': the request_id was already used; what was stored with it;
--   any other outcome: lending_repay_once's refusal (its message), figures in `detail`.
-- Repayments run in loan order (arrival order within a loan), so two groups never wait
-- on each other's loans in a cycle; a repayment sees those before it in the group as
-- committed, as it would one after the other.
-- `p_audit` is a JSON array with each call's audit entry (services/common/audit.py
-- AuditRecord.as_json), or null where there is none to write.
CREATE FUNCTION lending_repay_many(
    p_request_ids text[], p_method text, p_payload_hashes bytea[], p_loan_ids text[],
    p_amounts bigint[], p_paid_on date[], p_recorded_by text[], p_memos text[],
    p_transaction_ids text[], p_audit jsonb)
RETURNS TABLE (call_position integer, outcome text, stored_method text,
    stored_payload_hash bytea, answer bytea, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    e jsonb;
    r record;
BEGIN
    FOR i IN
        SELECT x.n FROM unnest(p_loan_ids) WITH ORDINALITY AS x(loan_id, n)
        ORDER BY x.loan_id, x.n
    LOOP
        e := p_audit -> (i - 1);
        call_position := i;
        BEGIN
            SELECT * INTO r FROM lending_repay_once(
                p_request_ids[i], p_method, p_payload_hashes[i], p_loan_ids[i], p_amounts[i],
                p_paid_on[i], p_recorded_by[i], p_memos[i], p_transaction_ids[i],
                e ->> 'subject', ARRAY(SELECT jsonb_array_elements_text(e -> 'roles')),
                e ->> 'method', e ->> 'request_id', e -> 'resource_ids', e ->> 'code',
                e ->> 'reason', e ->> 'on_behalf_of');
            outcome := CASE WHEN r.replayed THEN 'REPLAY' ELSE 'OK' END;
            stored_method := r.stored_method;
            stored_payload_hash := r.stored_payload_hash;
            answer := r.answer;
            detail := NULL;
        EXCEPTION WHEN SQLSTATE 'LR001' THEN
            GET STACKED DIAGNOSTICS outcome = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
            stored_method := NULL;
            stored_payload_hash := NULL;
            answer := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
