"""Eligibility: survivor intake and assessment against versioned rules-as-data."""

# The rule set a survivor is assessed under until pinned to a version of it.
DEFAULT_RULE_SET = "reintegration"
