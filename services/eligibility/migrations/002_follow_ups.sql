-- Impact follow-ups after final repayment, for the programme's reach report.
CREATE TABLE follow_ups (
    survivor_id      text NOT NULL REFERENCES survivors (survivor_id),
    months_after     integer NOT NULL CHECK (months_after IN (6, 12)),
    household_income_minor bigint NOT NULL CHECK (household_income_minor >= 0),
    working          boolean NOT NULL,
    family_members_supported integer NOT NULL CHECK (family_members_supported BETWEEN 0 AND 49),
    recorded_by      text NOT NULL,
    recorded_on      date NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (survivor_id, months_after)
);
