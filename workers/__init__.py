"""Temporal workflows and activities: each survivor's journey through the programme."""
