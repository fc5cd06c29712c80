-- A loan's statement read page by page is one snapshot: each of a loan's transactions is
-- numbered in the order it was recorded (loan_seq), and a statement's later pages count
-- only the transactions numbered by the time its first page was read. Before, a payment
-- recorded while an auditor paged, but dated before their place, was not on the later
-- pages while their running balances counted it: the statement did not add up.
--
-- Every transaction of a loan is written under the loan's lock (SELECT ... FOR UPDATE on
-- its row, held to the commit), so numbering from the highest number so far gives the
-- order of the commits; the unique index turns a write made without the lock into an
-- error, never a number given twice. Transactions recorded before this migration keep no
-- number: every first page read since sees them.
ALTER TABLE ledger_transactions ADD COLUMN loan_seq bigint;
CREATE UNIQUE INDEX ledger_transactions_loan_seq ON ledger_transactions (loan_id, loan_seq);

CREATE FUNCTION ledger_number_in_loan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.loan_seq := coalesce((SELECT max(t.loan_seq) FROM ledger_transactions t
                              WHERE t.loan_id = NEW.loan_id), 0) + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_transactions_number_in_loan BEFORE INSERT ON ledger_transactions
    FOR EACH ROW WHEN (NEW.loan_id IS NOT NULL) EXECUTE FUNCTION ledger_number_in_loan();
