"""Assistance: the holistic-assistance catalogue (plugins), needs, providers, capacity."""
