"""The survivor journey: one workflow per survivor, from intake to final repayment."""
