"""`make run`: the whole cluster in the foreground, on the embedded defaults.

On first start it creates, in the state folder, a signing key and the JWKS the services
verify tokens with; on every start it writes `dev-token` (every role) and the worker's
`service-token`.

Order of start: PostgreSQL, Temporal (dev server with its Web UI and a SQLite file in the
state folder), the three services, the worker. Ctrl-C (or SIGTERM) stops them in reverse,
at any moment (a start first runs to its end; the demo's seeding is cut short). If a port
is taken nothing is started; a part that fails to come up stops the rest, so half a
cluster is never left running; a part that exits once the cluster runs is started again
(RESTARTS).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from services.common.auth import ensure_dev_credentials
from services.common.channels import DEV_TOKEN_FILE
from services.common.config import ConfigError, Settings, load_settings
from services.common.metrics import PORT_OFFSETS, metrics_port
from workers.codec import ensure_keyring

BIN = Path(sys.executable).parent
# The database the state folder's journeys were started with (see pair_with_database).
INSTALLATION_FILE = "installation-id"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if the launcher itself is killed, so none is orphaned."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Part:
    name: str
    argv: list[str]
    address: str
    ports: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, timeout: float, part: Part) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if part.process is not None and part.process.poll() is not None:
            raise RuntimeError(f"{part.name} exited with code {part.process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{part.name} did not open port {port} within {timeout:.0f}s")


# SQLite's default journal syncs the file several times per transaction, and the dev
# server writes one per workflow task: in WAL mode with synchronous=normal a commit is a
# write, and the log is synced at checkpoints. A dev server that crashes loses nothing; a
# power cut may lose its last moments of history, which the journeys redo safely (every
# call they make carries a request id from the workflow id and the step). Measured at 20
# journeys started per second: workflow-task p50 70-80 ms before, 39-42 ms after.
DEV_SERVER_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")

# A part that exits is started again, unless it exited this often within this many
# seconds: then it would only fail again, and the cluster stops, saying which.
RESTARTS = 5
RESTART_WINDOW = 60.0
# The longest the demo cohort may take to start (it takes seconds).
DEMO_SECONDS = 120.0


def dev_server_argv(
    settings: Settings, *, on_file: bool = True, headless: bool = False
) -> list[str]:
    """`temporal server start-dev` as the cluster runs it: state in a SQLite file in the
    state folder (or in memory), the Web UI pointed at the codec server so it shows
    payloads decrypted (or no UI), and the journeys' search attributes."""
    from workers.journey.search_attributes import dev_server_flags

    argv = [
        str(BIN / "temporal"),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_port),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *dev_server_flags(),
    ]
    if on_file:
        argv += ["--db-filename", str((settings.state_dir / "temporal.db").resolve())]
        argv += [f"--sqlite-pragma={pragma}" for pragma in DEV_SERVER_SQLITE_PRAGMAS]
    if headless:
        return [*argv, "--headless"]
    return [
        *argv,
        "--ui-port",
        str(settings.temporal_ui_port),
        "--ui-codec-endpoint",
        f"http://{settings.codec_server_address}",
    ]


def plan(settings: Settings) -> list[Part]:
    python = sys.executable
    parts: list[Part] = []
    if settings.temporal_address is None:
        address = settings.embedded_temporal_address
        parts.append(
            Part(
                "temporal",
                dev_server_argv(settings),
                address,
                [port_of(address), settings.temporal_ui_port],
            )
        )
    for name, address in (
        ("eligibility", settings.eligibility_address),
        ("lending", settings.lending_address),
        ("assistance", settings.assistance_address),
    ):
        ports = [port_of(address), *metrics_ports(settings, name)]
        parts.append(Part(name, [python, "-m", f"services.{name}"], address, ports))
    parts.append(
        Part(
            "worker",
            [python, "-m", "workers"],
            settings.effective_temporal_address,
            metrics_ports(settings, "worker"),
        )
    )
    codec = settings.codec_server_address
    parts.append(Part("codec", [python, "-m", "workers.codec_server"], codec, [port_of(codec)]))
    return parts


def metrics_ports(settings: Settings, process: str) -> list[int]:
    port = metrics_port(settings, process)
    return [port] if port else []


def pair_with_database(state_dir: Path, database_url: str) -> None:
    """The journeys in the state folder (Temporal's temporal.db) refer to survivors, loans
    and assistance in one database. Each database is stamped with an id on its first start
    (schema `cluster`), and the state folder keeps the id of its own: a start that pairs
    the folder with another database is refused (RuntimeError), before anything starts.
    Pointed at a new database with an old state folder, the cluster started "healthy" and
    every journey then failed on a loan that does not exist."""
    import asyncio

    recorded_file = state_dir / INSTALLATION_FILE
    recorded = recorded_file.read_text().strip() if recorded_file.exists() else ""

    async def stamp() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cluster.installation'))")
                await conn.execute(
                    """CREATE SCHEMA IF NOT EXISTS cluster;
                       CREATE TABLE IF NOT EXISTS cluster.installation (
                           installation_id text PRIMARY KEY,
                           stamped_at timestamptz NOT NULL DEFAULT now())"""
                )
                found: str | None = await conn.fetchval(
                    "SELECT installation_id FROM cluster.installation"
                )
                if recorded and recorded != found:  # refused: the transaction leaves nothing
                    raise RuntimeError(
                        f"the journeys in {state_dir} (temporal.db) belong to another database "
                        "than this one: their survivors, loans and assistance are not in it. "
                        "Point DATABASE_URL at the database they were started with, or give "
                        "this database a state folder of its own (MINEACTION_STATE_DIR). If the "
                        f"data was restored on purpose, delete {recorded_file} to pair the two. "
                        "Nothing was started."
                    )
                if found is None:  # both new: pair them
                    found = str(uuid.uuid4())
                    await conn.execute(
                        "INSERT INTO cluster.installation (installation_id) VALUES ($1)", found
                    )
                return found
        finally:
            await conn.close()

    try:
        found = asyncio.run(stamp())
    except (OSError, asyncpg.PostgresError) as error:
        raise RuntimeError(
            f"the database could not be reached ({error}); check DATABASE_URL. Nothing was started."
        ) from None
    if not recorded:
        recorded_file.write_text(found + "\n")


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parts = plan(settings)
        self.env = dict(os.environ)
        self._postgres: object | None = None

    def check_ports(self) -> None:
        taken = [(p.name, port) for p in self.parts for port in p.ports if port_taken(port)]
        if taken:
            lines = ", ".join(f"port {port} (needed by {name})" for name, port in taken)
            raise RuntimeError(f"cannot start: already in use: {lines}. Nothing was started.")

    def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        # A signing key and JWKS on first start; dev-token and service-token every start.
        ensure_dev_credentials(self.settings)
        # The payload keyring before the worker, the codec server and the demo use it.
        if self.settings.payload_keys_file is None:
            ensure_keyring(self.settings.effective_payload_keys_file)
        if self.settings.database_url is None:
            import pgserver

            data_dir = (self.settings.state_dir / "postgres").resolve()
            server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
            self._postgres = server
            self.env["DATABASE_URL"] = str(server.get_uri())
        if self.settings.temporal_address is None:  # the journeys live in the state folder
            database_url = self.env.get("DATABASE_URL") or str(self.settings.database_url)
            pair_with_database(self.settings.state_dir, database_url)
        self.env["TEMPORAL_ADDRESS"] = self.settings.effective_temporal_address
        # Everything starts at once (the worker retries until Temporal answers); then we
        # wait until each part listens.
        for part in self.parts:
            self._launch(part)
        for part in self.parts:
            for port in part.ports:
                wait_for_port(port, 60, part)

    def report(self) -> None:
        database = (
            "embedded PostgreSQL in " + str(self.settings.state_dir / "postgres")
            if self.settings.database_url is None
            else "DATABASE_URL"
        )
        rows = [
            ("PostgreSQL", database),
            ("Temporal frontend", self.settings.effective_temporal_address),
        ]
        if self.settings.temporal_address is None:
            rows.append(("Temporal Web UI", f"http://127.0.0.1:{self.settings.temporal_ui_port}"))
        rows += [
            ("Eligibility gRPC", self.settings.eligibility_address),
            ("Lending gRPC", self.settings.lending_address),
            ("Assistance gRPC", self.settings.assistance_address),
            ("Journey worker", f"task queue {self.settings.journey_task_queue}"),
            ("Codec server", f"http://{self.settings.codec_server_address}"),
            ("Metrics", self._metrics_row()),
            ("Dev token", str(self.settings.state_dir / DEV_TOKEN_FILE) + " (every role)"),
        ]
        width = max(len(name) for name, _ in rows)
        print("\nThe cluster is running (Ctrl-C stops it):", flush=True)
        for name, where in rows:
            print(f"  {name.ljust(width)}  {where}", flush=True)
        print(flush=True)

    def _metrics_row(self) -> str:
        ports = {name: metrics_port(self.settings, name) for name in PORT_OFFSETS}
        if not all(ports.values()):
            return "off"
        listed = ", ".join(f"{port} {name}" for name, port in ports.items())
        return f"http://{self.settings.metrics_host}:PORT/metrics ({listed})"

    def seed_demo(self) -> None:
        """On first start only: a small live cohort for a new operator to look at."""
        marker = self.settings.state_dir / "demo-cohort-started"
        if marker.exists() or self.settings.temporal_address is not None:
            return
        import asyncio

        from cluster.demo import start_demo_cohort

        try:
            # Bounded: a part that died meanwhile would leave it waiting for good, before
            # the watch that starts the part again.
            ids = asyncio.run(asyncio.wait_for(start_demo_cohort(self.settings), DEMO_SECONDS))
        except Exception as error:  # the cluster is still useful without its demo
            # A timeout's message is empty: an exception itself is always true.
            why = str(error) or f"no answer within {DEMO_SECONDS:.0f} s"
            print(f"cluster: the demo cohort could not be started: {why}", file=sys.stderr)
            return
        marker.write_text("\n".join(ids) + "\n")
        print(f"Demo cohort started: {len(ids)} journeys, e.g. {ids[0]}", flush=True)

    def _launch(self, part: Part) -> None:
        # Own process group: a Ctrl-C reaches only the launcher, which stops the parts in
        # reverse order of start.
        part.process = subprocess.Popen(
            part.argv, env=self.env, process_group=0, preexec_fn=_die_with_parent
        )

    def watch(self, stop_requested: list[int]) -> None:
        """A part that exits is started again, as a deployment's restart policy would
        (one crashed process stopped the whole cluster); one that keeps exiting
        (RESTARTS in RESTART_WINDOW seconds) stops the cluster, saying so."""
        restarted: dict[str, list[float]] = {}
        while not stop_requested:
            for part in self.parts:
                if part.process is None or part.process.poll() is None:
                    continue
                now = time.monotonic()
                recent = [t for t in restarted.get(part.name, []) if now - t < RESTART_WINDOW]
                if len(recent) >= RESTARTS:
                    print(
                        f"{part.name} exited with code {part.process.returncode}, "
                        f"{len(recent) + 1} times within {RESTART_WINDOW:.0f} s; stopping "
                        "the cluster",
                        file=sys.stderr,
                    )
                    return
                restarted[part.name] = [*recent, now]
                print(
                    f"{part.name} exited with code {part.process.returncode}; starting it again",
                    file=sys.stderr,
                    flush=True,
                )
                self._launch(part)
            time.sleep(0.5)

    def stop(self) -> None:
        for part in reversed(self.parts):
            process = part.process
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._postgres is not None:
            self._postgres.cleanup()  # type: ignore[attr-defined]
            self._postgres = None


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"cluster: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    cluster = Cluster(settings)
    try:
        cluster.check_ports()
    except RuntimeError as error:
        print(f"cluster: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    stop_requested: list[int] = []
    seeding: list[bool] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)
        # Seeding the demo is cut short at once; a start runs to its end first (cut
        # short, the embedded PostgreSQL being started would be left running), and the
        # cluster then stops.
        if seeding:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    try:
        cluster.start()
        cluster.report()
        if not settings.no_demo and not stop_requested:
            seeding.append(True)
            try:
                cluster.seed_demo()
            finally:
                seeding.clear()
        cluster.watch(stop_requested)
        exit_code = 0 if stop_requested else 1
    except KeyboardInterrupt:
        exit_code = 0  # Ctrl-C (or SIGTERM) while seeding the demo: stopped as asked
    except RuntimeError as error:
        print(f"cluster: {error}", file=sys.stderr)
        exit_code = 1
    finally:
        started = any(part.process is not None for part in cluster.parts)
        if started:  # a start refused before any part ran has said so already
            print("stopping the cluster...", file=sys.stderr, flush=True)
        cluster.stop()
        if started:
            print("stopped.", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)
