"""The audit log: who called which mutating RPC, when, with which request_id, and with
what outcome. One append-only table per service schema (the database refuses UPDATE,
DELETE and TRUNCATE), written by the interceptor chain, read by auditors through
AuditService.ListAuditEntries, which every service process hosts over its own log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from mineaction.audit.v1 import audit_service_pb2 as pb
from mineaction.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.common import pagination
from services.common.db import Database, Migration, migrate
from services.common.protoconv import timestamp

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name
MIGRATIONS_DIR = Path(__file__).with_name("audit_migrations")


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


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, entry: AuditRecord) -> None:
        await self.db.pool.execute(
            """INSERT INTO audit_log (subject, roles, method, request_id, resource_ids,
                   code, reason, on_behalf_of)
               VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)""",
            entry.subject,
            entry.roles,
            entry.method,
            entry.request_id,
            json.dumps(entry.resource_ids),
            entry.code,
            entry.reason,
            entry.on_behalf_of,
        )


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
        after = pagination.decode(request.page_token, query)
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
                    request_id=row["request_id"],
                    resource_ids=json.loads(row["resource_ids"]),
                    code=row["code"],
                    reason=row["reason"],
                    on_behalf_of=row["on_behalf_of"],
                )
            )
        token = pagination.encode([page[-1]["entry_id"]], query) if len(rows) > size else ""
        return pb.ListAuditEntriesResponse(audit_entries=entries, next_page_token=token)


def attach(server: grpc.aio.Server, db: Database) -> None:
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(db), server)
