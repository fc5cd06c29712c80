"""The local cluster: embedded PostgreSQL and Temporal, the three services and the
worker, started and stopped together by `make run`."""
