-- The audit log of every mutating call (services/common/audit.py), one per service schema.
-- Append-only: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE TABLE audit_log (
    entry_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    subject      text NOT NULL CHECK (length(subject) BETWEEN 1 AND 256),
    roles        text[] NOT NULL,
    method       text NOT NULL CHECK (method LIKE '/%/%'),
    request_id   text NOT NULL,
    resource_ids jsonb NOT NULL DEFAULT '{}'::jsonb,
    code         text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    on_behalf_of text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_subject ON audit_log (subject, entry_id);
CREATE INDEX audit_log_method ON audit_log (method, entry_id);
CREATE INDEX audit_log_recorded_at ON audit_log (recorded_at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
