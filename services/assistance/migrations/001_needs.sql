-- A need is recorded separately from the assistance that addresses it, and stays open
-- until it is met.
CREATE TABLE needs (
    need_id       text PRIMARY KEY,
    survivor_id   text NOT NULL,
    type_id       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('OPEN', 'PLANNED', 'REFERRED', 'MET', 'CLOSED_UNMET')),
    description   text NOT NULL DEFAULT '',
    assessed_by   text NOT NULL,
    -- Copies of the survivor attributes the delivery report needs.
    district_code text NOT NULL,
    sex           smallint NOT NULL,
    age_band      smallint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX needs_by_survivor ON needs (survivor_id, need_id);
