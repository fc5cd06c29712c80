-- The loan's latest posting when a schedule revision was made: a reschedule counts every
-- repayment up to it as repaid (base_repaid_minor), so such a repayment cannot be
-- reversed. Deciding that from totals let one through once later repayments were at
-- least as large. NULL for revisions made before: the service decides those from totals,
-- as before.
ALTER TABLE schedule_revisions ADD COLUMN last_posting_id bigint;
