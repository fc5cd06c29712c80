-- Impact follow-ups are per loan: a survivor with a later loan is followed up at +6 and
-- +12 months after that loan's final repayment too. Follow-ups recorded before keep an
-- empty loan id (as does a follow-up not tied to a loan).
ALTER TABLE follow_ups
    ADD COLUMN loan_id text NOT NULL DEFAULT '',
    DROP CONSTRAINT follow_ups_pkey,
    ADD PRIMARY KEY (survivor_id, loan_id, months_after);
