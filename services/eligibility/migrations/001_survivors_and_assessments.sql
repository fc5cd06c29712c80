-- The survivor intake record lives here; other services copy only what their reports need.
CREATE TABLE survivors (
    survivor_id       text PRIMARY KEY CHECK (survivor_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$'),
    intake            jsonb NOT NULL,
    district_code     text NOT NULL,
    consent_given_on  date NOT NULL,
    -- The rule-set version of the first assessment; later ones stay on it unless a
    -- re-assessment under a newer version is asked for, with a reason.
    pinned_rule_set_id      text,
    pinned_rule_set_version integer CHECK (pinned_rule_set_version >= 1),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Published rule sets are immutable: no UPDATE or DELETE, ever.
CREATE TABLE rule_sets (
    rule_set_id  text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    source_yaml  text NOT NULL,
    published_by text NOT NULL,
    change_note  text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_set_id, version)
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on %.% is not allowed: records here are immutable',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER rule_sets_immutable BEFORE UPDATE OR DELETE ON rule_sets
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE assessments (
    assessment_id    text PRIMARY KEY,
    survivor_id      text NOT NULL REFERENCES survivors (survivor_id),
    assessment_date  date NOT NULL,
    rule_set_id      text NOT NULL,
    rule_set_version integer NOT NULL,
    district_code    text NOT NULL,
    -- The facts the decision read, kept so what-if simulations can replay them.
    intake           jsonb NOT NULL,
    result           bytea NOT NULL,
    reassessment_reason text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (rule_set_id, rule_set_version) REFERENCES rule_sets (rule_set_id, version)
);
CREATE INDEX assessments_by_survivor ON assessments (survivor_id, created_at, assessment_id);
CREATE INDEX assessments_by_district ON assessments (district_code, assessment_date);
CREATE INDEX assessments_by_date ON assessments (assessment_date, assessment_id);

CREATE TRIGGER assessments_immutable BEFORE UPDATE OR DELETE ON assessments
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
