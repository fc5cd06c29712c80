"""AssistanceService: the catalogue of assistance types and survivors' needs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from mineaction.type.v1 import localized_text_pb2

from services.assistance.catalogue import AssistanceTypePlugin, load_catalogue
from services.common import pagination
from services.common.config import Settings
from services.common.db import Database, fetch_one
from services.common.errors import Unimplemented, invalid
from services.common.idempotency import idempotent
from services.common.server import ServiceSpec

HERE = Path(__file__).parent
_CAPACITY = {
    "stock": pb.CAPACITY_MODEL_STOCK,
    "seats": pb.CAPACITY_MODEL_SEATS,
    "session_slots": pb.CAPACITY_MODEL_SESSION_SLOTS,
    "none": pb.CAPACITY_MODEL_NONE,
}


def _timestamp(moment: Any) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def type_to_proto(plugin: AssistanceTypePlugin) -> pb.AssistanceType:
    return pb.AssistanceType(
        type_id=plugin.type_id,
        name=localized_text_pb2.LocalizedText(en=plugin.name_en, az=plugin.name_az),
        capacity_model=_CAPACITY[plugin.capacity_model],
        follow_up_days=plugin.follow_up_days,
    )


def need_to_proto(row: asyncpg.Record) -> pb.Need:
    return pb.Need(
        need_id=row["need_id"],
        survivor_id=row["survivor_id"],
        type_id=row["type_id"],
        state=pb.NeedState.Value(f"NEED_STATE_{row['state']}"),
        description=row["description"],
        assessed_by=row["assessed_by"],
        create_time=_timestamp(row["created_at"]),
        update_time=_timestamp(row["updated_at"]),
        district_code=row["district_code"],
        sex=row["sex"],
        age_band=row["age_band"],
    )


class AssistanceServicer(pb_grpc.AssistanceServiceServicer):
    def __init__(self, db: Database, catalogue: dict[str, AssistanceTypePlugin]) -> None:
        self.db = db
        self.catalogue = catalogue

    async def ListAssistanceTypes(
        self, request: pb.ListAssistanceTypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssistanceTypesResponse:
        after = pagination.decode(request.page_token, {})
        size = pagination.page_size(request.page_size)
        ids = sorted(t for t in self.catalogue if after is None or t > after[0])
        page = ids[:size]
        token = pagination.encode([page[-1]], {}) if len(ids) > size else ""
        return pb.ListAssistanceTypesResponse(
            assistance_types=[type_to_proto(self.catalogue[t]) for t in page],
            next_page_token=token,
        )

    async def RecordNeed(
        self, request: pb.RecordNeedRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordNeedResponse:
        if request.type_id not in self.catalogue:
            raise invalid("type_id", f"unknown assistance type {request.type_id!r}")
        async with self.db.transaction() as conn:

            async def record() -> pb.RecordNeedResponse:
                row = await fetch_one(
                    conn,
                    """INSERT INTO needs (need_id, survivor_id, type_id, state, description,
                           assessed_by, district_code, sex, age_band)
                       VALUES ($1, $2, $3, 'OPEN', $4, $5, $6, $7, $8) RETURNING *""",
                    f"need-{uuid.uuid4().hex[:20]}",
                    request.survivor_id,
                    request.type_id,
                    request.description,
                    request.assessed_by,
                    request.district_code,
                    request.sex,
                    request.age_band,
                )
                return pb.RecordNeedResponse(need=need_to_proto(row))

            return await idempotent(
                conn,
                method="RecordNeed",
                request=request,
                response_type=pb.RecordNeedResponse,
                effect=record,
            )

    async def RequestAssistance(
        self, request: pb.RequestAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestAssistanceResponse:
        raise Unimplemented("RequestAssistance is not available yet")

    async def AdvanceAssistance(
        self, request: pb.AdvanceAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdvanceAssistanceResponse:
        raise Unimplemented("AdvanceAssistance is not available yet")

    async def GetAssistance(
        self, request: pb.GetAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAssistanceResponse:
        raise Unimplemented("GetAssistance is not available yet")

    async def ListAssistance(
        self, request: pb.ListAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssistanceResponse:
        raise Unimplemented("ListAssistance is not available yet")

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProvidersResponse:
        raise Unimplemented("ListProviders is not available yet")

    async def GetDeliveryReport(
        self, request: pb.GetDeliveryReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDeliveryReportResponse:
        raise Unimplemented("GetDeliveryReport is not available yet")


async def attach(server: grpc.aio.Server, db: Database, settings: Settings) -> None:
    pb_grpc.add_AssistanceServiceServicer_to_server(
        AssistanceServicer(db, load_catalogue()), server
    )


SPEC = ServiceSpec(
    name="assistance",
    full_name="mineaction.assistance.v1.AssistanceService",
    migrations_dir=HERE / "migrations",
    attach=attach,
    address=lambda settings: settings.assistance_address,
)
