-- Loan products are versioned data; a loan keeps the version it was made under.
CREATE TABLE loan_products (
    product_id       text NOT NULL CHECK (product_id ~ '^[a-z][a-z0-9_]{1,39}$'),
    version          integer NOT NULL CHECK (version >= 1),
    name_en          text NOT NULL,
    name_az          text NOT NULL,
    min_amount_minor bigint NOT NULL CHECK (min_amount_minor > 0),
    max_amount_minor bigint NOT NULL CHECK (max_amount_minor >= min_amount_minor),
    term_months      integer NOT NULL CHECK (term_months BETWEEN 1 AND 120),
    grace_months     integer NOT NULL CHECK (grace_months >= 0 AND grace_months < term_months),
    moratorium_months integer[] NOT NULL DEFAULT '{}',
    max_tranches     integer NOT NULL CHECK (max_tranches BETWEEN 1 AND 12),
    currency_code    text NOT NULL DEFAULT 'AZN' CHECK (currency_code = 'AZN'),
    PRIMARY KEY (product_id, version)
);

CREATE TABLE funds (
    fund_id                 text PRIMARY KEY,
    name_en                 text NOT NULL,
    name_az                 text NOT NULL,
    committed_capital_minor bigint NOT NULL CHECK (committed_capital_minor >= 0),
    currency_code           text NOT NULL DEFAULT 'AZN' CHECK (currency_code = 'AZN')
);

CREATE TABLE loans (
    loan_id          text PRIMARY KEY,
    survivor_id      text NOT NULL,
    product_id       text NOT NULL,
    product_version  integer NOT NULL,
    fund_id          text NOT NULL REFERENCES funds (fund_id),
    state            text NOT NULL CHECK (state IN ('SUBMITTED', 'APPROVED', 'REJECTED',
                         'WITHDRAWN', 'ACTIVE', 'CLOSED_OBLIGATIONS_MET', 'CLOSED_WRITTEN_OFF')),
    principal_minor  bigint NOT NULL CHECK (principal_minor > 0),
    currency_code    text NOT NULL CHECK (currency_code = 'AZN'),
    purpose          text NOT NULL DEFAULT '',
    -- Copies of the survivor attributes the portfolio report needs, keyed by the opaque id.
    district_code    text NOT NULL,
    borrower_sex     smallint NOT NULL,
    borrower_age_band smallint NOT NULL,
    submitted_by     text NOT NULL,
    approved_by      text NOT NULL DEFAULT '',
    committee_decision_ref text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (product_id, product_version) REFERENCES loan_products (product_id, version),
    -- Four eyes: the approver is never the person who submitted.
    CHECK (approved_by = '' OR approved_by <> submitted_by)
);
CREATE INDEX loans_by_survivor ON loans (survivor_id, loan_id);
CREATE INDEX loans_by_state ON loans (state, loan_id);

-- Every state change, with who made it and why; append-only.
CREATE TABLE loan_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id     text NOT NULL REFERENCES loans (loan_id),
    from_state  text,
    to_state    text NOT NULL,
    actor       text NOT NULL,
    note        text NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL DEFAULT now()
);
