"""Simulated borrowers: repayment behaviour for tests, demos and programme simulations."""
