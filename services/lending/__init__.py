"""Lending: loan products, the loan book, schedules, the double-entry ledger and the
revolving fund."""
