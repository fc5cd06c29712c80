"""Temporal workflows and activities: each survivor's journey through the programme."""

import services  # noqa: F401  (sets gRPC's process environment before gRPC loads)
