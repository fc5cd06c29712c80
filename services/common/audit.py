"""The audit log: who called which mutating RPC, when, with which request_id, and with
what outcome. One append-only table per service schema (the database refuses UPDATE,
DELETE and TRUNCATE), written by the interceptor chain, read by auditors through
AuditService.ListAuditEntries, which every service process hosts over its own log.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from mineaction.audit.v1 import audit_service_pb2 as pb
from mineaction.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.common import pagination
from services.common.db import Database, Migration, migrate
from services.common.protoconv import timestamp
from services.common.storable import kept

if TYPE_CHECKING:  # the chain itself audits: no import at run time
    from services.common.interceptors import GuardedServer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name
MIGRATIONS_DIR = Path(__file__).with_name("audit_migrations")


# What ListAuditEntries shows of a value at most: more than any entry written now holds.
_LISTED = 1024


async def apply_migrations(db: Database) -> None:
    """The audit table lives in each service's own schema, from one migration folder."""
    migrations = [
        Migration(f"audit/{path.name}", path.read_text())
        for path in sorted(MIGRATIONS_DIR.glob("*.sql"))
    ]
    async with db.pool.acquire() as conn:
        await migrate(conn, db.schema, migrations)


def is_mutating(request: object) -> bool:
    """Every mutating RPC carries a request_id (the idempotency key)."""
    return isinstance(request, Message) and "request_id" in request.DESCRIPTOR.fields_by_name


def resource_ids(request: Message) -> dict[str, str]:
    """The *_id fields of the request and of its direct sub-messages (cheap, no lookups):
    loan_id, survivor_id, assistance_id, ..."""
    ids: dict[str, str] = {}
    for descriptor, value in request.ListFields():
        if descriptor.message_type is not None and isinstance(value, Message):
            for inner, inner_value in value.ListFields():
                if inner.name.endswith("_id") and isinstance(inner_value, str):
                    ids.setdefault(inner.name, inner_value)
        elif (
            descriptor.name.endswith("_id")
            and descriptor.name != "request_id"
            and isinstance(value, str)
        ):
            ids[descriptor.name] = value
    return ids


@dataclass
class AuditRecord:
    subject: str
    roles: list[str]
    method: str
    request_id: str
    resource_ids: dict[str, str] = field(default_factory=dict)
    code: str = "OK"
    reason: str = ""
    on_behalf_of: str = ""

    def arguments(self) -> tuple[object, ...]:
        """The values for `insert_statement`, in its order."""
        return (
            self.subject,
            self.roles,
            self.method,
            self.request_id,
            json.dumps(self.resource_ids),
            self.code,
            self.reason,
            self.on_behalf_of,
        )

    def as_json(self) -> dict[str, object]:
        """The entry for `insert_many_statement`: its fields by name."""
        return dict(vars(self))


def insert_statement(first: int = 1) -> str:
    """INSERT of one entry whose values are the parameters $first .. $first+7."""
    n = [f"${first + i}" for i in range(8)]
    return f"""INSERT INTO audit_log (subject, roles, method, request_id, resource_ids,
                   code, reason, on_behalf_of)
               VALUES ({n[0]}, {n[1]}, {n[2]}, {n[3]}, {n[4]}::jsonb, {n[5]}, {n[6]}, {n[7]})"""


_INSERT = insert_statement()


def insert_many_statement(parameter: int) -> str:
    """INSERT of many entries from one parameter, $parameter: a JSON array of
    `AuditRecord.as_json` objects (one array, since each entry's roles are an array)."""
    return f"""INSERT INTO audit_log (subject, roles, method, request_id, resource_ids,
                   code, reason, on_behalf_of)
               SELECT e.subject, e.roles, e.method, e.request_id, e.resource_ids, e.code,
                      e.reason, e.on_behalf_of
               FROM jsonb_to_recordset(${parameter}::jsonb) AS e(subject text, roles text[],
                   method text, request_id text, resource_ids jsonb, code text, reason text,
                   on_behalf_of text)"""


@dataclass
class PendingAudit:
    """The entry of the mutating call in progress. A call whose effect commits writes its
    OK entry in that same transaction (no extra round trip or commit, and never an
    acknowledged change without its entry); the interceptor writes every other entry
    (refusals, failures, replays) on its own after the call."""

    entry: Callable[[str, str], AuditRecord]  # (code, reason) -> the entry
    written: bool = False  # the OK entry was written in the call's transaction...
    committed: bool = False  # ...and that transaction committed

    def ok_entry(self) -> AuditRecord:
        """The entry to write with the call's effect."""
        return self.entry("OK", "")

    def committed_with_effect(self) -> None:
        """The OK entry was written by the statement that made the effect, which has
        committed (a group commit writing it from another task)."""
        self.written = self.committed = True


_pending: contextvars.ContextVar[PendingAudit | None] = contextvars.ContextVar(
    "pending_audit", default=None
)


def begin_call(pending: PendingAudit) -> contextvars.Token[PendingAudit | None]:
    return _pending.set(pending)


def end_call(token: contextvars.Token[PendingAudit | None]) -> None:
    _pending.reset(token)


def current_call() -> PendingAudit | None:
    """The audited call in progress, for work that writes its entry from another task
    (a group commit): it calls `committed_with_effect` on the object itself."""
    return _pending.get()


def to_write_in_transaction() -> AuditRecord | None:
    """The OK entry to write with the effect, once per call; None when there is none
    (no audited caller, or already written). The caller calls `written_in_transaction`
    after the statement and `transaction_committed` after its commit."""
    pending = _pending.get()
    if pending is None or pending.written:
        return None
    return pending.ok_entry()


def written_in_transaction() -> None:
    pending = _pending.get()
    if pending is not None:
        pending.written = True


def transaction_committed() -> None:
    """Called once the transaction that wrote the call's entry has committed."""
    pending = _pending.get()
    if pending is not None and pending.written:
        pending.committed = True


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, entry: AuditRecord) -> None:
        await self.db.pool.execute(_INSERT, *entry.arguments())


def _time(value: timestamp_pb2.Timestamp | None) -> datetime | None:
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return None
    return value.ToDatetime(tzinfo=UTC)


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        start = _time(request.start_time if request.HasField("start_time") else None)
        end = _time(request.end_time if request.HasField("end_time") else None)
        query = {
            "subject": request.subject,
            "method": request.method,
            "start": start.isoformat() if start else "",
            "end": end.isoformat() if end else "",
        }
        after = pagination.decode(request.page_token, query, (pagination.int64,))
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
            """SELECT * FROM audit_log
               WHERE ($1::bigint IS NULL OR entry_id < $1)
                 AND ($2 = '' OR subject = $2)
                 AND ($3 = '' OR method = $3 OR method LIKE '%/' || $3)
                 AND ($4::timestamptz IS NULL OR recorded_at >= $4)
                 AND ($5::timestamptz IS NULL OR recorded_at < $5)
               ORDER BY entry_id DESC LIMIT $6""",
            int(after[0]) if after else None,
            request.subject,
            request.method,
            start,
            end,
            size + 1,
        )
        page = rows[:size]
        entries = []
        for row in page:
            entries.append(
                pb.AuditEntry(
                    entry_id=row["entry_id"],
                    record_time=timestamp(row["recorded_at"]),
                    subject=row["subject"],
                    roles=row["roles"],
                    method=row["method"],
                    # Kept short, as they are written now (a few dozen characters): an
                    # entry written before with an id of megabytes made every page
                    # holding it too large to send.
                    request_id=kept(row["request_id"], _LISTED),
                    resource_ids={
                        k: kept(v, _LISTED) for k, v in json.loads(row["resource_ids"]).items()
                    },
                    code=row["code"],
                    reason=row["reason"],
                    on_behalf_of=kept(row["on_behalf_of"], _LISTED),
                )
            )
        token = pagination.encode([page[-1]["entry_id"]], query) if len(rows) > size else ""
        return pb.ListAuditEntriesResponse(audit_entries=entries, next_page_token=token)


def attach(server: GuardedServer, db: Database) -> None:
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(db), server)
