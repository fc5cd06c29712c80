-- RecordRepayment in one round trip (after BEGIN): claim the request_id, repay, and read
-- the loan as the response shows it. Replaces migration 007's function.
--
-- lending_loan_view_one is the single-loan view of services/lending/figures.py as static
-- SQL, so that PL/pgSQL plans it once per connection (dynamic SQL would be planned on
-- every call). Its figures are the text of figures.loan_figures(figures.ONE_LOAN) and its
-- tranches figures.TRANCHES_JSON, verbatim; tests/integration/test_lending_money.py holds
-- the copy to the Python text, so a change there needs a new migration here.
DROP FUNCTION lending_record_repayment_once(text, text, bytea, text, bigint, date, text,
    text, text);

CREATE FUNCTION lending_loan_view_one(date, text)
RETURNS TABLE (loan loans, disbursed bigint, repaid bigint, written_off bigint,
    recovered bigint, outstanding bigint, dpd integer, tranches json)
LANGUAGE plpgsql AS $view$
#variable_conflict use_column
BEGIN
RETURN QUERY
WITH bal AS (
    -- Loans with nothing dated after $1: their position row (migration 005) is their
    -- balance as of $1.
    SELECT lp.loan_id, lp.disbursed, lp.repaid, lp.written_off, lp.recovered
    FROM loan_positions lp
    WHERE lp.loan_id = $2::text AND lp.last_value_date <= $1
    UNION ALL
    -- The others: their postings dated by $1.
    SELECT p.loan_id,
        coalesce(sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'DISBURSEMENT'), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE'
              AND p.kind IN ('REPAYMENT', 'REPAYMENT_REVERSAL')), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'LOANS_RECEIVABLE' AND p.kind = 'WRITE_OFF'), 0)::bigint,
        coalesce(-sum(p.amount_minor) FILTER (
            WHERE p.account = 'RECOVERY_INCOME'), 0)::bigint
    FROM postings p
    JOIN loan_positions later ON later.loan_id = p.loan_id AND later.last_value_date > $1
    WHERE p.loan_id = $2::text AND p.value_date <= $1
      AND p.account IN ('LOANS_RECEIVABLE', 'RECOVERY_INCOME')
    GROUP BY p.loan_id
),
rev AS (  -- the revision in force: the latest one effective by $1
    SELECT r.loan_id, r.base_repaid_minor, r.due_dates, r.cumulative_minor
    FROM (SELECT n.loan_id, max(n.revision) AS revision FROM schedule_revisions n
          WHERE n.loan_id = $2::text AND n.effective_date <= $1 GROUP BY n.loan_id) latest
    JOIN schedule_revisions r ON r.loan_id = latest.loan_id AND r.revision = latest.revision
),
pz AS (
    SELECT d.loan_id, range_agg(daterange(d.start_date, d.end_date, '[]')) AS paused
    FROM delinquency_pauses d
    WHERE d.loan_id = $2::text AND d.start_date <= $1
    GROUP BY d.loan_id
),
sched AS (  -- what the revision in force says as of $1, narrow: no arrays past here
    SELECT bal.loan_id, bal.disbursed, bal.repaid, bal.written_off, bal.recovered,
        rev.base_repaid_minor,
        -- Principal fallen due by $1 (instalments due by then, cumulated).
        rev.cumulative_minor[width_bucket($1::date, rev.due_dates)] AS fallen_due,
        -- The oldest instalment not covered by the principal repaid against the revision
        -- (oldest due first): one past the instalments fully paid.
        rev.due_dates[width_bucket(bal.repaid::bigint - rev.base_repaid_minor,
            rev.cumulative_minor) + 1] AS oldest_unpaid_due
    FROM bal LEFT JOIN rev ON rev.loan_id = bal.loan_id
),
pos AS (
    SELECT l.loan_id, l.fund_id, l.product_id, l.district_code, l.borrower_sex,
        coalesce(s.disbursed, 0)::bigint AS disbursed,
        coalesce(s.repaid, 0)::bigint AS repaid,
        coalesce(s.written_off, 0)::bigint AS written_off,
        coalesce(s.recovered, 0)::bigint AS recovered,
        -- The receivable moves only by these three kinds (and their reversals).
        coalesce(s.disbursed - s.repaid - s.written_off, 0)::bigint AS outstanding,
        coalesce(s.base_repaid_minor, 0)::bigint AS base_repaid,
        coalesce(s.fallen_due, 0)::bigint AS fallen_due,
        s.oldest_unpaid_due,
        pz.paused
    FROM loans l
    LEFT JOIN sched s ON s.loan_id = l.loan_id
    LEFT JOIN pz ON pz.loan_id = l.loan_id
    WHERE l.loan_id = $2::text
),
figures AS (
    SELECT pos.*,
        CASE WHEN outstanding > 0 AND oldest_unpaid_due < $1 THEN
            ($1 - oldest_unpaid_due) - coalesce((
                SELECT sum(upper(r) - lower(r)) FROM unnest(paused * datemultirange(
                    daterange(oldest_unpaid_due, $1, '(]'))) r
            ), 0)
        ELSE 0 END::integer AS dpd
    FROM pos
)
SELECT l, f.disbursed, f.repaid, f.written_off, f.recovered, f.outstanding, f.dpd,
    (SELECT coalesce(json_agg(json_build_object(
        'sequence', t.sequence, 'amount_minor', t.amount_minor, 'kind', t.kind,
        'description', t.description, 'disbursement_date', t.disbursement_date,
        'transaction_id', t.transaction_id) ORDER BY t.sequence), '[]')
     FROM tranches t WHERE t.loan_id = l.loan_id)
FROM loans l JOIN figures f ON f.loan_id = l.loan_id;
END $view$;

-- The request_id first (same statement and order as services/common/idempotency.py: key,
-- then the loan's lock). A request_id already claimed comes back as REPLAY with what was
-- stored, nothing written; a concurrent duplicate waits on the key until the first
-- transaction ends. A refusal comes back as its outcome with nothing written but the key,
-- which the service's rollback removes. The stored answer and the audit entry follow in
-- the service's next statement, in the same transaction.
CREATE FUNCTION lending_repay(
    p_request_id text, p_method text, p_payload_hash bytea,
    p_loan_id text, p_amount bigint, p_paid_on date, p_recorded_by text, p_memo text,
    p_transaction_id text)
RETURNS TABLE (outcome text, state text, outstanding_before bigint, first_disbursed_on date,
    repaid_against_revision bigint, due_dates date[], cumulative_minor bigint[],
    stored_method text, stored_payload_hash bytea, stored_response bytea,
    loan loans, disbursed bigint, repaid bigint, written_off bigint, recovered bigint,
    outstanding bigint, dpd integer, tranches json)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    INSERT INTO idempotency_keys (request_id, method, payload_hash)
    VALUES (p_request_id, p_method, p_payload_hash)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'REPLAY'::text, NULL::text, NULL::bigint, NULL::date,
            NULL::bigint, NULL::date[], NULL::bigint[], k.method, k.payload_hash, k.response,
            NULL::loans, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::integer, NULL::json
        FROM idempotency_keys k WHERE k.request_id = p_request_id;
        RETURN;
    END IF;
    SELECT * INTO r FROM lending_record_repayment(p_loan_id, p_amount, p_paid_on,
        p_recorded_by, p_memo, p_transaction_id);
    IF r.outcome IS DISTINCT FROM 'OK' AND r.outcome IS DISTINCT FROM 'CLOSED' THEN
        RETURN QUERY SELECT r.outcome, r.state, r.outstanding, r.first_disbursed_on,
            r.repaid_against_revision, r.due_dates, r.cumulative_minor, NULL::text,
            NULL::bytea, NULL::bytea, NULL::loans, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::integer, NULL::json;
        RETURN;
    END IF;
    -- A new statement: it sees the repayment just written.
    RETURN QUERY SELECT r.outcome, r.state, r.outstanding, r.first_disbursed_on,
        r.repaid_against_revision, r.due_dates, r.cumulative_minor, NULL::text, NULL::bytea,
        NULL::bytea, v.loan, v.disbursed, v.repaid, v.written_off, v.recovered, v.outstanding,
        v.dpd, v.tranches
    FROM lending_loan_view_one(p_paid_on, p_loan_id) v;
END $$;
