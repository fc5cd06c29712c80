-- A survivor's withdrawal of consent to data processing (WithdrawConsent): while it
-- stands, nothing uses their personal data. Registering them again with consent given
-- on or after that day clears it. Who recorded it and when is also in the audit log.
ALTER TABLE survivors
    ADD COLUMN consent_withdrawn_on date,
    ADD COLUMN consent_withdrawn_by text,
    ADD CONSTRAINT survivors_consent_withdrawal_whole
        CHECK ((consent_withdrawn_on IS NULL) = (consent_withdrawn_by IS NULL)),
    ADD CONSTRAINT survivors_consent_withdrawn_after_given
        CHECK (consent_withdrawn_on >= consent_given_on);
