-- A survivor's withdrawal of consent to data processing (WithdrawConsent): while it
-- stands (survivors.consent_withdrawn_on), nothing uses their personal data. Registering
-- them again with consent given after that day clears it.
ALTER TABLE survivors
    ADD COLUMN consent_withdrawn_on date,
    ADD COLUMN consent_withdrawn_by text,
    ADD CONSTRAINT survivors_consent_withdrawal_whole
        CHECK ((consent_withdrawn_on IS NULL) = (consent_withdrawn_by IS NULL)),
    ADD CONSTRAINT survivors_consent_withdrawn_after_given
        CHECK (consent_withdrawn_on >= consent_given_on);

-- Every withdrawal, and every consent given again after one, kept for audit: the
-- survivor's row holds only the withdrawal that stands.
CREATE TABLE consent_events (
    survivor_id text NOT NULL REFERENCES survivors (survivor_id),
    event       text NOT NULL CHECK (event IN ('WITHDRAWN', 'GIVEN_AGAIN')),
    event_date  date NOT NULL,
    recorded_by text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_by_survivor ON consent_events (survivor_id, recorded_at);
CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
