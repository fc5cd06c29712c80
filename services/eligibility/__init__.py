"""Eligibility: survivor intake and assessment against versioned rules-as-data."""
