"""Plumbing shared by every process of the cluster: configuration, logging, gRPC server
start-up, the database pool and migrations, idempotency and error mapping."""
