-- A repayment's answer is built from what the repayment itself has in hand, not from the
-- generic single-loan view (lending_loan_view_one, dropped here): that view cost about a
-- fifth of a repayment's PostgreSQL time, to find what the repayment already knows.
--
-- As of the answer's day (the payment's date, or the loan's latest value date when later)
-- the figures are GetLoan's (services/lending/figures.py), for these reasons:
-- - nothing of the loan is dated after that day, so its position row, read after the
--   ledger trigger counted this payment, is its balance then;
-- - the schedule revision in force is the loan's latest: lending_record_repayment refused
--   a payment dated before it, so it took effect by that day;
-- - days past due are counted from the oldest instalment of that revision not covered by
--   the principal repaid against it, less the days paused (read only when one is overdue).
-- tests/integration/test_lending_ledger_properties.py holds every answer to GetLoan's
-- figures as of the same day, over random sequences of every kind of operation.
--
-- And a group's repayments no longer run each in a subtransaction of its own. A refusal
-- is found before the repayment writes anything but its request_id's key, so
-- lending_repay_once now deletes that key itself and answers with the refusal, where it
-- raised LR001 for lending_repay_many (migration 011) to undo the subtransaction. What a
-- caller sees is unchanged: a refused repayment leaves nothing behind, and its request_id
-- can be used again. Each subtransaction took an XID of its own and its share of the time.
DROP FUNCTION lending_repay_once(text, text, bytea, text, bigint, date, text, text, text,
    text, text[], text, text, jsonb, text, text, text);

-- outcome 'OK', 'REPLAY' (what was stored with the request_id), or the refusal of
-- lending_record_repayment, with its figures in `detail`.
CREATE FUNCTION lending_repay_once(
    p_request_id text, p_method text, p_payload_hash bytea,
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text,
    -- the audit entry's columns, in audit_log's order (NULL subject: none to write)
    a_subject text, a_roles text[], a_method text, a_request_id text, a_resource_ids jsonb,
    a_code text, a_reason text, a_on_behalf_of text)
RETURNS TABLE (outcome text, stored_method text, stored_payload_hash bytea, answer bytea,
    detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
    v_pos loan_positions%ROWTYPE;
    v_loan json;
    v_tranches json;
    v_as_of date;
    v_outstanding bigint;
    v_oldest_unpaid_due date;
    v_dpd integer := 0;
    v_answer bytea;
BEGIN
    INSERT INTO idempotency_keys (request_id, method, payload_hash)
    VALUES (p_request_id, p_method, p_payload_hash)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'REPLAY', k.method, k.payload_hash, k.response, NULL::text
        FROM idempotency_keys k WHERE k.request_id = p_request_id;
        RETURN;
    END IF;
    SELECT * INTO r FROM lending_record_repayment(p_loan_id, p_amount, p_paid_on,
        p_recorded_by, p_memo, p_transaction_id);
    IF r.outcome IS DISTINCT FROM 'OK' AND r.outcome IS DISTINCT FROM 'CLOSED' THEN
        -- Refused before writing anything but the key: the key goes too.
        DELETE FROM idempotency_keys k WHERE k.request_id = p_request_id;
        RETURN QUERY SELECT r.outcome, NULL::text, NULL::bytea, NULL::bytea,
            json_build_object('state', r.state, 'outstanding', r.outstanding,
                'first_disbursed_on', r.first_disbursed_on)::text;
        RETURN;
    END IF;
    -- New statements: they see the repayment just written.
    SELECT * INTO v_pos FROM loan_positions lp WHERE lp.loan_id = p_loan_id;
    v_as_of := greatest(p_paid_on, v_pos.last_value_date);
    v_outstanding := v_pos.disbursed - v_pos.repaid - v_pos.written_off;
    v_oldest_unpaid_due := r.due_dates[
        width_bucket(r.repaid_against_revision + p_amount, r.cumulative_minor) + 1];
    IF v_outstanding > 0 AND v_oldest_unpaid_due < v_as_of THEN
        v_dpd := (v_as_of - v_oldest_unpaid_due) - coalesce((
            SELECT sum(upper(x) - lower(x)) FROM unnest((
                SELECT range_agg(daterange(d.start_date, d.end_date, '[]'))
                FROM delinquency_pauses d
                WHERE d.loan_id = p_loan_id AND d.start_date <= v_as_of
            ) * datemultirange(daterange(v_oldest_unpaid_due, v_as_of, '(]'))) x
        ), 0);
    END IF;
    SELECT to_json(l), (SELECT coalesce(json_agg(json_build_object(
        'sequence', t.sequence, 'amount_minor', t.amount_minor, 'kind', t.kind,
        'description', t.description, 'disbursement_date', t.disbursement_date,
        'transaction_id', t.transaction_id) ORDER BY t.sequence), '[]')
     FROM tranches t WHERE t.loan_id = l.loan_id)
    INTO v_loan, v_tranches
    FROM loans l WHERE l.loan_id = p_loan_id;
    v_answer := convert_to(json_build_object(
        'transaction_id', p_transaction_id,
        'as_of', v_as_of,
        'repaid_against_revision', r.repaid_against_revision,
        'cumulative_minor', r.cumulative_minor,
        'loan', v_loan,
        'disbursed', v_pos.disbursed, 'repaid', v_pos.repaid,
        'written_off', v_pos.written_off, 'recovered', v_pos.recovered,
        'outstanding', v_outstanding, 'dpd', v_dpd,
        'tranches', v_tranches,
        -- The day the loan closed, when this repayment closed it: the latest value date
        -- on its receivable among the transactions that stand (a payment dated before an
        -- earlier-recorded one closes the loan as of that later date, as GetLoan says).
        'close_date', CASE WHEN r.outcome = 'CLOSED' THEN lending_close_date(p_loan_id)
            END)::text, 'UTF8');
    UPDATE idempotency_keys k SET response = v_answer WHERE k.request_id = p_request_id;
    IF a_subject IS NOT NULL THEN
        INSERT INTO audit_log (subject, roles, method, request_id, resource_ids, code, reason,
            on_behalf_of)
        VALUES (a_subject, a_roles, a_method, a_request_id, a_resource_ids, a_code, a_reason,
            a_on_behalf_of);
    END IF;
    RETURN QUERY SELECT 'OK', NULL::text, NULL::bytea, v_answer, NULL::text;
END $$;

CREATE OR REPLACE FUNCTION lending_repay_many(
    p_request_ids text[], p_method text, p_payload_hashes bytea[], p_loan_ids text[],
    p_amounts bigint[], p_paid_on date[], p_recorded_by text[], p_memos text[],
    p_transaction_ids text[], p_audit jsonb)
RETURNS TABLE (call_position integer, outcome text, stored_method text,
    stored_payload_hash bytea, answer bytea, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    e jsonb;
BEGIN
    -- In loan order (arrival order within a loan), so two groups never wait on each
    -- other's loans in a cycle.
    FOR i IN
        SELECT x.n FROM unnest(p_loan_ids) WITH ORDINALITY AS x(loan_id, n)
        ORDER BY x.loan_id, x.n
    LOOP
        e := p_audit -> (i - 1);
        RETURN QUERY SELECT i, o.outcome, o.stored_method, o.stored_payload_hash, o.answer,
            o.detail
        FROM lending_repay_once(
            p_request_ids[i], p_method, p_payload_hashes[i], p_loan_ids[i], p_amounts[i],
            p_paid_on[i], p_recorded_by[i], p_memos[i], p_transaction_ids[i],
            e ->> 'subject', ARRAY(SELECT jsonb_array_elements_text(e -> 'roles')),
            e ->> 'method', e ->> 'request_id', e -> 'resource_ids', e ->> 'code',
            e ->> 'reason', e ->> 'on_behalf_of') o;
    END LOOP;
END $$;

DROP FUNCTION lending_loan_view_one(date, text);
