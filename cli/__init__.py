"""`mineaction`: the operators' command-line tool (Typer and Rich) over the cluster's gRPC
APIs and the Temporal journeys, and `mineaction simulate` for programme managers."""

import os

import services  # noqa: F401  (sets gRPC's process environment before gRPC loads)

# gRPC core's informational lines (fork handlers when PostgreSQL helpers start) are not
# for the operator; errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
