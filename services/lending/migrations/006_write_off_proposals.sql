-- A write-off is proposed by one person and confirmed by another (four eyes by identity):
-- the proposal waits here; the confirmation posts it and records both names in write_offs.
CREATE TABLE write_off_proposals (
    loan_id        text PRIMARY KEY REFERENCES loans (loan_id),
    reason         text NOT NULL CHECK (reason <> ''),
    write_off_date date NOT NULL,
    proposed_by    text NOT NULL CHECK (proposed_by <> ''),
    created_at     timestamptz NOT NULL DEFAULT now()
);
