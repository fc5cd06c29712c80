-- Each posting carries its transaction's kind and value date, so balances as of a date
-- are one pass over postings with no join: the report over 100,000 loans needs it. A
-- foreign key on all four columns makes the copies impossible to get wrong.
ALTER TABLE ledger_transactions
    ADD CONSTRAINT ledger_transactions_kind_date UNIQUE (transaction_id, fund_id, kind, value_date);

ALTER TABLE postings ADD COLUMN kind text, ADD COLUMN value_date date;
-- The append-only guard is lifted only for this one-off backfill, inside the migration.
ALTER TABLE postings DISABLE TRIGGER postings_append_only;
UPDATE postings p SET kind = t.kind, value_date = t.value_date
FROM ledger_transactions t WHERE t.transaction_id = p.transaction_id;
ALTER TABLE postings ENABLE TRIGGER postings_append_only;
ALTER TABLE postings
    ALTER COLUMN kind SET NOT NULL,
    ALTER COLUMN value_date SET NOT NULL,
    ADD CONSTRAINT postings_match_transaction FOREIGN KEY (transaction_id, fund_id, kind, value_date)
        REFERENCES ledger_transactions (transaction_id, fund_id, kind, value_date);

DROP INDEX postings_by_loan;
CREATE INDEX postings_by_loan ON postings (loan_id, account)
    INCLUDE (amount_minor, kind, value_date);
