"""The local cluster: embedded PostgreSQL and Temporal, the three services and the
worker, started and stopped together by `make run`."""

import services  # noqa: F401  (sets gRPC's process environment before gRPC loads)
