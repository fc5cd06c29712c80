-- The double-entry ledger, tranches, schedule revisions, hardship pauses and write-offs.
-- Money is bigint qəpik. Sign convention: debit positive, credit negative.

CREATE TABLE ledger_transactions (
    transaction_id text PRIMARY KEY CHECK (transaction_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$'),
    fund_id        text NOT NULL REFERENCES funds (fund_id),
    loan_id        text REFERENCES loans (loan_id),
    kind           text NOT NULL CHECK (kind IN ('CAPITAL', 'DISBURSEMENT', 'REPAYMENT',
                       'REPAYMENT_REVERSAL', 'WRITE_OFF', 'RECOVERY', 'RECOVERY_REVERSAL')),
    value_date     date NOT NULL,
    -- A correction names the transaction it cancels; each can be reversed at most once.
    reverses       text UNIQUE REFERENCES ledger_transactions (transaction_id),
    recorded_by    text NOT NULL,
    memo           text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transaction_id, fund_id),
    CHECK ((kind LIKE '%\_REVERSAL') = (reverses IS NOT NULL)),
    CHECK ((kind = 'CAPITAL') = (loan_id IS NULL))
);
CREATE INDEX ledger_transactions_by_loan ON ledger_transactions (loan_id, value_date);

CREATE TABLE postings (
    posting_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id text NOT NULL,
    fund_id        text NOT NULL,
    account        text NOT NULL CHECK (account IN ('FUND_CASH', 'FUND_CAPITAL',
                       'LOANS_RECEIVABLE', 'WRITE_OFF_EXPENSE', 'RECOVERY_INCOME')),
    -- Set on every loan-related posting; the receivable is kept per loan.
    loan_id        text REFERENCES loans (loan_id),
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),
    FOREIGN KEY (transaction_id, fund_id) REFERENCES ledger_transactions (transaction_id, fund_id),
    CHECK (account <> 'LOANS_RECEIVABLE' OR loan_id IS NOT NULL)
);
CREATE INDEX postings_by_transaction ON postings (transaction_id);
CREATE INDEX postings_by_loan ON postings (loan_id, account) INCLUDE (amount_minor, transaction_id);
CREATE INDEX postings_by_fund ON postings (fund_id, account) INCLUDE (amount_minor);

-- Every transaction balances: checked at commit, once all its postings are in.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
    n integer;
BEGIN
    SELECT coalesce(sum(amount_minor), 0), count(*) INTO total, n
    FROM postings WHERE transaction_id = NEW.transaction_id;
    IF n < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % posting(s) summing to %',
            NEW.transaction_id, n, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_transactions_balance AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
CREATE CONSTRAINT TRIGGER postings_balance AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE, whoever asks.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TABLE tranches (
    loan_id           text NOT NULL REFERENCES loans (loan_id),
    sequence          integer NOT NULL CHECK (sequence BETWEEN 1 AND 12),
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    kind              text NOT NULL CHECK (kind IN ('CASH', 'IN_KIND')),
    description       text NOT NULL CHECK (description <> ''),
    disbursement_date date NOT NULL,
    transaction_id    text NOT NULL UNIQUE REFERENCES ledger_transactions (transaction_id),
    disbursed_by      text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (loan_id, sequence)
);

-- A schedule revision covers the principal outstanding when it was made; repayments
-- before it (base_repaid_minor) are not applied to its instalments.
CREATE TABLE schedule_revisions (
    loan_id           text NOT NULL REFERENCES loans (loan_id),
    revision          integer NOT NULL CHECK (revision >= 1),
    effective_date    date NOT NULL,
    principal_minor   bigint NOT NULL CHECK (principal_minor > 0),
    base_repaid_minor bigint NOT NULL CHECK (base_repaid_minor >= 0),
    reason            text NOT NULL CHECK (reason <> ''),
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (loan_id, revision)
);

CREATE TABLE instalments (
    loan_id          text NOT NULL,
    revision         integer NOT NULL,
    number           integer NOT NULL CHECK (number >= 1),
    due_date         date NOT NULL,
    principal_minor  bigint NOT NULL CHECK (principal_minor >= 0),
    cumulative_minor bigint NOT NULL CHECK (cumulative_minor >= principal_minor),
    PRIMARY KEY (loan_id, revision, number),
    FOREIGN KEY (loan_id, revision) REFERENCES schedule_revisions (loan_id, revision)
);

-- A revision's instalments sum exactly to its principal (checked at commit).
CREATE FUNCTION schedule_check_exact() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT coalesce(sum(principal_minor), 0) INTO total FROM instalments
    WHERE loan_id = NEW.loan_id AND revision = NEW.revision;
    IF total <> NEW.principal_minor THEN
        RAISE EXCEPTION 'schedule %/% instalments sum to %, not %',
            NEW.loan_id, NEW.revision, total, NEW.principal_minor USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER schedule_revisions_exact AFTER INSERT ON schedule_revisions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION schedule_check_exact();

-- Hardship pauses of delinquency: time-boxed, with a reason, never deleted.
CREATE TABLE delinquency_pauses (
    pause_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id      text NOT NULL REFERENCES loans (loan_id),
    start_date   date NOT NULL,
    end_date     date NOT NULL,
    reason       text NOT NULL CHECK (reason <> ''),
    requested_by text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (end_date > start_date AND end_date <= start_date + 366)
);
CREATE INDEX delinquency_pauses_by_loan ON delinquency_pauses (loan_id, start_date);

CREATE TABLE write_offs (
    loan_id        text PRIMARY KEY REFERENCES loans (loan_id),
    transaction_id text NOT NULL UNIQUE REFERENCES ledger_transactions (transaction_id),
    write_off_date date NOT NULL,
    reason         text NOT NULL CHECK (reason <> ''),
    proposed_by    text NOT NULL,
    confirmed_by   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Four eyes, in the database too.
    CHECK (lower(proposed_by) <> lower(confirmed_by))
);

CREATE INDEX loans_by_fund ON loans (fund_id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ledger_transactions', 'postings', 'tranches', 'schedule_revisions',
                             'instalments', 'delinquency_pauses', 'write_offs', 'loan_events']
    LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION refuse_change()', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()', t || '_no_truncate', t);
    END LOOP;
END $$;
