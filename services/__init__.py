"""The three gRPC services (eligibility, lending, assistance) and what they share.

Imported first by every entry point (services, worker, cluster, CLI, benches, tests), so
that this is set before gRPC loads: our processes start other programs (PostgreSQL's
tools, Temporal's dev server, the services) by fork and exec and never use gRPC in a
forked child, but gRPC's fork support restarts its poller there, which can crash the
child before it runs the program (gRPC issue 43055; here 79 of 300 forks while calls were
in flight, PostgreSQL's initdb among them; none with it off).
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
