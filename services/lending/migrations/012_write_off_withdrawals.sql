-- A write-off proposal can be withdrawn, with a reason (a loan proposed by mistake, or
-- the borrower back in touch): the proposal leaves write_off_proposals, so a new one may
-- follow, and its whole record stays here, append-only, with who withdrew it and why.
CREATE TABLE write_off_withdrawals (
    withdrawal_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id         text NOT NULL REFERENCES loans (loan_id),
    reason          text NOT NULL CHECK (reason <> ''),
    write_off_date  date NOT NULL,
    proposed_by     text NOT NULL,
    proposed_at     timestamptz NOT NULL,
    withdrawn_by    text NOT NULL CHECK (withdrawn_by <> ''),
    withdraw_reason text NOT NULL CHECK (withdraw_reason <> ''),
    withdrawn_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX write_off_withdrawals_by_loan ON write_off_withdrawals (loan_id, withdrawal_id);

CREATE TRIGGER write_off_withdrawals_append_only BEFORE UPDATE OR DELETE ON write_off_withdrawals
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER write_off_withdrawals_no_truncate BEFORE TRUNCATE ON write_off_withdrawals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
