"""AssistanceService: the catalogue of assistance types (plugins), survivors' needs, the
assistance that addresses them, providers and their capacity, and the delivery report.

Needs and assistance are kept apart, as victim-assistance practice does: a need is
assessed, assistance is planned and referred against it, delivered, then followed up; the
need is met only when a transition that the type declares `meets_need` fires, never by
delivery alone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from services.assistance import capacity
from services.assistance.capacity import POOL_COLUMNS
from services.assistance.catalogue import (
    ATTENDANCE_KEY,
    CANCEL,
    REQUEST,
    WAITLISTED,
    AssistanceTypePlugin,
    Transition,
    load_catalogue,
)
from services.assistance.consent import ConsentRegister
from services.assistance.records import (
    ASSISTANCE_SELECT,
    NEED_SELECT,
    assistance_to_proto,
    check_data,
    load_assistance,
    need_to_proto,
    pool_to_proto,
    struct_to_dict,
    text,
    type_to_proto,
)
from services.common import audit, pagination
from services.common.config import Settings
from services.common.db import Connection, Database, fetch_one
from services.common.districts import require_known_district, require_known_district_filter
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    invalid,
)
from services.common.idempotency import idempotent, once_per_request, seen
from services.common.interceptors import GuardedServer
from services.common.programme_time import (
    PROGRAMME_TIME_ZONE,
    not_after_today,
    programme_date,
)
from services.common.protoconv import timestamp
from services.common.server import ServiceSpec

HERE = Path(__file__).parent
# The most units one pool may hold: CreateCapacityPool's `capacity` is capped at this in
# the contract, and AdjustCapacity keeps a pool within it.
MAX_POOL_CAPACITY = 100_000
# Report days end at midnight where the programme works.
_PROVIDER_KINDS = {
    "CLINIC": pb.PROVIDER_KIND_CLINIC,
    "SPA_CENTRE": pb.PROVIDER_KIND_SPA_CENTRE,
    "TRAINING_CENTRE": pb.PROVIDER_KIND_TRAINING_CENTRE,
    "SUPPLIER": pb.PROVIDER_KIND_SUPPLIER,
    "WORKSHOP": pb.PROVIDER_KIND_WORKSHOP,
}


async def refresh_need(conn: Connection, need_id: str, *, met: bool = False) -> None:
    """A need's state follows its assistance: met stays met; otherwise referred while
    unfinished assistance with a provider exists, planned while one without, else open."""
    await conn.execute(
        """UPDATE needs SET
               state = CASE
                   WHEN state = 'MET' OR $2 THEN 'MET'
                   WHEN EXISTS (SELECT 1 FROM assistance a WHERE a.need_id = $1 AND a.active
                                AND a.provider_id IS NOT NULL) THEN 'REFERRED'
                   WHEN EXISTS (SELECT 1 FROM assistance a WHERE a.need_id = $1 AND a.active)
                       THEN 'PLANNED'
                   ELSE 'OPEN' END,
               met_at = CASE WHEN met_at IS NULL AND $2 THEN now() ELSE met_at END,
               updated_at = now()
           WHERE need_id = $1""",
        need_id,
        met,
    )


async def _provider_kind(conn: Connection, provider_id: str) -> str:
    """A provider's kind; NOT_FOUND for one the programme does not know."""
    kind: str | None = await conn.fetchval(
        "SELECT kind FROM providers WHERE provider_id = $1", provider_id
    )
    if kind is None:
        raise NotFound(f"provider {provider_id} not found", reason="NO_PROVIDER")
    return kind


def _check_provider_kind(plugin: AssistanceTypePlugin, provider_id: str, kind: str) -> None:
    """FAILED_PRECONDITION unless the provider is of a kind that delivers the type."""
    if plugin.provider_kinds and kind not in plugin.provider_kinds:
        raise FailedPrecondition(
            f"{provider_id} is a {kind} provider; {plugin.type_id} is delivered by "
            f"{' or '.join(plugin.provider_kinds)} providers",
            reason="PROVIDER_KIND_MISMATCH",
            metadata={"provider_kind": kind},
        )


class AssistanceServicer(pb_grpc.AssistanceServiceServicer):
    def __init__(
        self,
        db: Database,
        catalogue: Mapping[str, AssistanceTypePlugin],
        consent: ConsentRegister,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.consent = consent
        # One waiter per pool and process at the pool's row lock: when a popular cohort
        # draws many requests at once, the rest queue here (in order) instead of all
        # waking in PostgreSQL at every commit. The row lock still decides; this only
        # keeps the herd off it, and replicas each have their own gate.
        self._gates: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _plugin(self, type_id: str, field: str = "type_id") -> AssistanceTypePlugin:
        plugin = self.catalogue.get(type_id)
        if plugin is None:
            raise invalid(field, f"unknown assistance type {type_id!r}", "UNKNOWN_TYPE")
        return plugin

    async def _check_type_filter(self, type_id: str, recorded_in: str) -> None:
        """A type filter names an installed type, or one whose records are kept (a type
        uninstalled since: its records are still listed by it)."""
        if type_id and type_id not in self.catalogue:
            kept = await self.db.pool.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {recorded_in} WHERE type_id = $1)", type_id
            )
            if not kept:
                self._plugin(type_id)  # refused: unknown assistance type

    def _check_state_filter(self, type_id: str, state: str) -> None:
        """A state filter names a state of the type asked for, or of any installed type."""
        plugins = (
            [self.catalogue[type_id]]
            if type_id in self.catalogue
            else list(self.catalogue.values())
        )
        known = sorted({s for plugin in plugins for s in plugin.all_states})
        if state not in known:
            raise invalid(
                "state",
                f"unknown state {state!r}{f' of {type_id}' if type_id else ''}: the states "
                f"are {', '.join(known)}",
                "UNKNOWN_STATE",
            )

    def _installed(self, type_id: str) -> AssistanceTypePlugin:
        """The plugin of a stored record; its type may have been uninstalled since."""
        plugin = self.catalogue.get(type_id)
        if plugin is None:
            raise FailedPrecondition(
                f"assistance type {type_id} is not installed on this server",
                reason="TYPE_NOT_INSTALLED",
                metadata={"type_id": type_id},
            )
        return plugin

    async def ListAssistanceTypes(
        self, request: pb.ListAssistanceTypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssistanceTypesResponse:
        after = pagination.decode(request.page_token, {}, (pagination.text,))
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
        self._plugin(request.type_id)
        # A request_id seen already gets its first answer (a need recorded before these
        # checks existed among them), eligibility up or not. Consent is asked before the
        # transaction: no connection, key or lock is held while eligibility answers.
        if not await seen(self.db.pool, request.request_id):
            require_known_district(request.district_code)
            await self.consent.require_consent("survivor_id", request.survivor_id)

        async def record(conn: Connection) -> pb.RecordNeedResponse:
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

        return await once_per_request(self.db, request, pb.RecordNeedResponse, record)

    async def GetNeed(
        self, request: pb.GetNeedRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetNeedResponse:
        row = await self.db.pool.fetchrow(f"{NEED_SELECT} WHERE n.need_id = $1", request.need_id)
        if row is None:
            raise NotFound(f"need {request.need_id} not found", reason="NEED_NOT_FOUND")
        return pb.GetNeedResponse(need=need_to_proto(row))

    async def ListNeeds(
        self, request: pb.ListNeedsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNeedsResponse:
        require_known_district_filter(request.district_code)
        await self._check_type_filter(request.type_id, "needs")
        filters = {
            "survivor_id": request.survivor_id,
            "type_id": request.type_id,
            # The stored state: NEED_STATE_OPEN is 'OPEN'; unspecified is any state.
            "state": pb.NeedState.Name(request.state).removeprefix("NEED_STATE_")
            if request.state
            else "",
            "district_code": request.district_code,
        }
        after = pagination.decode(request.page_token, filters, (pagination.int64,))
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
            f"""{NEED_SELECT}
                WHERE ($1 = '' OR n.survivor_id = $1) AND ($2 = '' OR n.type_id = $2)
                  AND ($3 = '' OR n.state = $3) AND ($4 = '' OR n.district_code = $4)
                  AND ($5::bigint IS NULL OR n.ord > $5)
                ORDER BY n.ord LIMIT $6""",
            *filters.values(),
            after[0] if after else None,
            size + 1,
        )
        page = rows[:size]
        token = pagination.encode([page[-1]["ord"]], filters) if len(rows) > size else ""
        return pb.ListNeedsResponse(needs=[need_to_proto(r) for r in page], next_page_token=token)

    async def RequestAssistance(
        self, request: pb.RequestAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestAssistanceResponse:
        data = struct_to_dict(request.data)
        quantity = request.quantity or 1
        # Before the transaction, for a new request only (a request_id seen already gets
        # its first answer): what the need's type refuses, then the survivor's consent,
        # asked again, not taken from the need (it may have been withdrawn since). No
        # connection, key or lock is held while eligibility answers.
        asked = await self.db.pool.fetchrow(
            """SELECT type_id, survivor_id,
                      EXISTS (SELECT 1 FROM idempotency_keys WHERE request_id = $2) AS seen
               FROM needs WHERE need_id = $1""",
            request.need_id,
            request.request_id,
        )
        if asked is not None and not asked["seen"]:
            self._check_request(self._installed(asked["type_id"]), data, quantity, request)
            await self.consent.require_consent("need_id", asked["survivor_id"])
        # The pool gate, if taken, is released as soon as the transaction has ended
        # (before the connection goes back to the pool, which costs a round trip).
        async with (
            self.db.pool.acquire() as conn,
            AsyncExitStack() as gate,
            conn.transaction(),
        ):

            async def create() -> pb.RequestAssistanceResponse:
                # The need fixes the type. It is locked so that one need never gets two
                # unfinished assistances; everything but the pool is settled before the
                # pool is touched, so the pool's lock is held for the last statement only.
                need = await conn.fetchrow(
                    "SELECT * FROM needs WHERE need_id = $1 FOR UPDATE", request.need_id
                )
                if need is None:
                    raise NotFound(f"need {request.need_id} not found", reason="NEED_NOT_FOUND")
                # Read after the lock, in a statement of its own: one that waited for the
                # lock would not see the assistance the call before it has just created.
                current = await conn.fetchval(
                    "SELECT assistance_id FROM assistance WHERE need_id = $1 AND active LIMIT 1",
                    request.need_id,
                )
                plugin = self._installed(need["type_id"])
                self._check_request(plugin, data, quantity, request)
                self._check_need_open(need, current)
                pool = await self._pool_for(conn, plugin, request, quantity)
                provider_id = await self._provider_for(conn, plugin, pool, request)
                course_length = self._course_length(plugin, data, pool)
                assistance_id = f"ast-{uuid.uuid4().hex[:20]}"
                created_at = await conn.fetchval(
                    """WITH created AS (
                           INSERT INTO assistance (assistance_id, need_id, survivor_id, type_id,
                               state, active, provider_id, pool_id, quantity, referral_consent,
                               data, course_length, district_code, sex, age_band)
                           VALUES ($1, $2, $3, $4, $5, true, $6, $7, $8, $9, $10::jsonb, $11,
                                   $12, $13, $14)
                           RETURNING created_at)
                       UPDATE needs SET state = $15, updated_at = now() FROM created
                       WHERE need_id = $2 RETURNING created.created_at""",
                    assistance_id,
                    need["need_id"],
                    need["survivor_id"],
                    plugin.type_id,
                    WAITLISTED if pool else plugin.initial_state,
                    provider_id,
                    pool.pool_id if pool else None,
                    quantity,
                    request.referral_consent,
                    json.dumps(data),
                    course_length,
                    need["district_code"],
                    need["sex"],
                    need["age_band"],
                    "REFERRED" if provider_id else "PLANNED",
                )
                position = 0
                if pool is None:
                    await capacity.record_event(
                        conn,
                        assistance_id,
                        "",
                        plugin.initial_state,
                        REQUEST,
                        request.requested_by,
                        json.dumps(data),
                    )
                else:
                    await gate.enter_async_context(self._gates[pool.pool_id])
                    placed = await capacity.place_request(
                        conn,
                        assistance_id=assistance_id,
                        pool_id=pool.pool_id,
                        quantity=quantity,
                        initial_state=plugin.initial_state,
                        actor=request.requested_by,
                        data_json=json.dumps(data),
                    )
                    if placed is None:
                        # Written off since _pool_for read it: refused as it would have
                        # been then (the transaction rolls back what was written).
                        now = await capacity.pool_row(conn, pool.pool_id)
                        assert now is not None
                        raise _over_capacity(pool.pool_id, now["capacity"])
                    position = placed
                state = WAITLISTED if position else plugin.initial_state
                created = pb.Assistance(
                    assistance_id=assistance_id,
                    need_id=need["need_id"],
                    survivor_id=need["survivor_id"],
                    type_id=plugin.type_id,
                    state=state,
                    provider_id=provider_id or "",
                    capacity_pool_id=pool.pool_id if pool else "",
                    waitlist_position=position,
                    data=request.data,
                    create_time=timestamp(created_at),
                    update_time=timestamp(created_at),
                    quantity=quantity,
                    course_length=course_length or 0,
                    referral_consent=request.referral_consent,
                    history=[
                        pb.AssistanceEvent(
                            to_state=state,
                            action=REQUEST,
                            actor=request.requested_by,
                            time=timestamp(created_at),
                            data=request.data,
                        )
                    ],
                )
                return pb.RequestAssistanceResponse(assistance=created)

            response = await idempotent(
                conn,
                method="RequestAssistance",
                request=request,
                response_type=pb.RequestAssistanceResponse,
                effect=create,
            )
        audit.transaction_committed()
        return response

    @staticmethod
    def _check_request(
        plugin: AssistanceTypePlugin,
        data: Mapping[str, Any],
        quantity: int,
        request: pb.RequestAssistanceRequest,
    ) -> None:
        check_data(plugin.validator, data)
        if quantity != 1 and plugin.capacity_model != "stock":
            raise invalid(
                "quantity",
                "only stock is reserved in quantities; seats and slots are one per person",
                "QUANTITY_NOT_STOCK",
            )
        if not plugin.uses_capacity and request.capacity_pool_id:
            raise invalid(
                "capacity_pool_id", f"{plugin.type_id} has no capacity pools", "NO_CAPACITY_POOLS"
            )

    @staticmethod
    async def _provider_for(
        conn: Connection,
        plugin: AssistanceTypePlugin,
        pool: capacity.Pool | None,
        request: pb.RequestAssistanceRequest,
    ) -> str | None:
        """The provider the survivor is referred to, if any; referral needs consent."""
        if pool is not None:
            provider_id = pool.provider_id  # its pool was checked to deliver the type
        elif request.provider_id:
            provider_id = request.provider_id
            # Referred straight to a provider, as to a pool's: one that delivers the type.
            _check_provider_kind(plugin, provider_id, await _provider_kind(conn, provider_id))
        else:
            return None
        if not request.referral_consent:
            raise FailedPrecondition(
                f"referral to provider {provider_id} needs the survivor's recorded consent "
                "(referral_consent)",
                reason="REFERRAL_CONSENT_MISSING",
                metadata={"provider_id": provider_id},
            )
        return provider_id

    async def _pool_for(
        self,
        conn: Connection,
        plugin: AssistanceTypePlugin,
        request: pb.RequestAssistanceRequest,
        quantity: int,
    ) -> capacity.Pool | None:
        """The pool to reserve from (read, not locked: what is checked here never
        changes, but for its capacity, which place_request checks again under the pool's
        lock); None for a type without capacity."""
        if not plugin.uses_capacity:
            return None
        pool_id = request.capacity_pool_id or await capacity.choose_pool(
            conn, plugin.type_id, request.provider_id, quantity
        )
        if pool_id is None:
            if request.provider_id:  # an unknown provider has no pool: say which it is
                await _provider_kind(conn, request.provider_id)
            raise FailedPrecondition(
                f"no capacity pool can take {plugin.type_id}"
                + (f" at provider {request.provider_id}" if request.provider_id else ""),
                reason="NO_CAPACITY_POOL",
            )
        row = await capacity.pool_row(conn, pool_id)
        if row is None:
            raise NotFound(f"capacity pool {pool_id} not found", reason="POOL_NOT_FOUND")
        pool = capacity.Pool.of(row)
        if pool.type_id != plugin.type_id:
            raise invalid(
                "capacity_pool_id",
                f"pool {pool_id} serves {pool.type_id}, not {plugin.type_id}",
                "POOL_TYPE_MISMATCH",
            )
        if request.provider_id and pool.provider_id != request.provider_id:
            raise invalid(
                "capacity_pool_id",
                f"pool {pool_id} belongs to provider {pool.provider_id}",
                "POOL_PROVIDER_MISMATCH",
            )
        if quantity > pool.capacity:
            raise _over_capacity(pool_id, pool.capacity)
        return pool

    @staticmethod
    def _course_length(
        plugin: AssistanceTypePlugin, data: Mapping[str, Any], pool: capacity.Pool | None
    ) -> int | None:
        if plugin.course_length_key is not None:
            length = data.get(plugin.course_length_key)
            if not isinstance(length, int) or length < 1:
                raise invalid(
                    f"data.{plugin.course_length_key}",
                    "the number of sessions in the course is required",
                    "COURSE_LENGTH_REQUIRED",
                )
            return length
        if plugin.course_length_from_pool:
            if pool is None or not pool.sessions:
                raise FailedPrecondition("the cohort has no course length", reason="NO_LENGTH")
            return pool.sessions
        return None

    @staticmethod
    def _check_need_open(need: asyncpg.Record, current: str | None) -> None:
        if need["state"] == "MET":
            raise FailedPrecondition(
                f"need {need['need_id']} is already met", reason="NEED_ALREADY_MET"
            )
        if current is not None:
            raise FailedPrecondition(
                f"need {need['need_id']} already has unfinished assistance {current}",
                reason="ASSISTANCE_IN_PROGRESS",
                metadata={"assistance_id": current},
            )

    async def AdvanceAssistance(
        self, request: pb.AdvanceAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdvanceAssistanceResponse:
        current = await self.db.pool.fetchrow(
            """SELECT assistance_id, type_id, pool_id, state, delivered_at,
                      EXISTS (SELECT 1 FROM idempotency_keys WHERE request_id = $2) AS seen
               FROM assistance WHERE assistance_id = $1""",
            request.assistance_id,
            request.request_id,
        )
        if current is None:
            raise NotFound(
                f"assistance {request.assistance_id} not found", reason="ASSISTANCE_NOT_FOUND"
            )
        plugin = self._installed(current["type_id"])
        transition = plugin.transition_for(request.action)
        if transition is None:
            raise invalid(
                "action",
                f"{plugin.type_id} has no action {request.action!r}; its actions are "
                + ", ".join(sorted({t.action for t in plugin.all_transitions})),
                "UNKNOWN_ACTION",
            )
        # A step the item's state does not allow is said so before its data is checked
        # (checked again under the row's lock). A request_id seen already is answered as
        # it was the first time: the step it made moved the item on.
        data = struct_to_dict(request.data)
        if not current["seen"]:
            _check_transition(plugin, transition, current)
            # Checked for a new request only: one accepted before an action's schema was
            # closed (extra keys) still gets its first answer.
            check_data(plugin.action_validator(transition), data)
        # A place this step may free is not given to one waiting whose consent no longer
        # stands: asked before the transaction, for a new request only, and only for a
        # step that gives up a place or leaves the queue (not an attendance, say).
        may_free = transition.releases_capacity or current["state"] == WAITLISTED
        without_consent = (
            await self._waiting_without_consent(current["pool_id"])
            if may_free and not current["seen"]
            else frozenset()
        )

        async def advance(conn: Connection) -> pb.AdvanceAssistanceResponse:
            pool_id = current["pool_id"]
            if pool_id is not None:
                await capacity.pool_row(conn, pool_id, lock=True)
            row = await fetch_one(
                conn,
                "SELECT * FROM assistance WHERE assistance_id = $1 FOR UPDATE",
                request.assistance_id,
            )
            await self._check_provider_acts_on_its_own(conn, row, request.actor)
            await self._apply(conn, plugin, transition, row, data, request.actor, without_consent)
            advanced = await load_assistance(conn, request.assistance_id)
            assert advanced is not None
            return pb.AdvanceAssistanceResponse(assistance=advanced)

        return await once_per_request(self.db, request, pb.AdvanceAssistanceResponse, advance)

    async def _check_provider_acts_on_its_own(
        self, conn: Connection, row: asyncpg.Record, actor: str
    ) -> None:
        """A step named as a provider's (the journey worker relays them by name) is that
        item's provider's only: another provider's name passed as the item's."""
        if actor == row["provider_id"]:
            return
        named = await conn.fetchval(
            # Spaces around it are the same provider's name (it passed as a person's).
            "SELECT provider_id FROM providers WHERE lower(provider_id) = lower($1)",
            actor.strip(),
        )
        if named is None:  # a person's name
            return
        if named == row["provider_id"]:  # the item's provider, in other letters
            raise invalid(
                "actor", f"name the provider by its id as written: {named}", "PROVIDER_ID_CASE"
            )
        raise PermissionDenied(
            f"{actor} is a provider, and assistance {row['assistance_id']} is "
            + (f"{row['provider_id']}'s" if row["provider_id"] else "not referred to one")
            + ": a provider records steps on its own items only",
            reason="NOT_THE_ITEMS_PROVIDER",
            metadata={"provider_id": row["provider_id"] or ""},
        )

    async def _apply(
        self,
        conn: Connection,
        plugin: AssistanceTypePlugin,
        t: Transition,
        row: asyncpg.Record,
        data: Mapping[str, Any],
        actor: str,
        without_consent: frozenset[str],
    ) -> None:
        """One lifecycle transition, with the effects the type declares for it; a place it
        frees goes down the queue once the requests of those `without_consent` are
        cancelled (_promote)."""
        _check_transition(plugin, t, row)
        state = row["state"]
        attended = row["attended_sessions"]
        if t.records_attendance:
            attended += data[ATTENDANCE_KEY]
            if attended > row["course_length"]:
                raise InvalidArgument(
                    f"attendance beyond the course length: {row['attended_sessions']} of "
                    f"{row['course_length']} sessions already attended",
                    [
                        FieldViolation(
                            f"data.{ATTENDANCE_KEY}",
                            f"at most {row['course_length'] - row['attended_sessions']} more "
                            f"session(s) can be attended in a course of {row['course_length']}",
                            "ATTENDANCE_BEYOND_COURSE",
                        )
                    ],
                )
        if t.requires_full_attendance and attended < (row["course_length"] or 0):
            raise FailedPrecondition(
                f"only {attended} of {row['course_length']} sessions attended",
                reason="COURSE_NOT_FULLY_ATTENDED",
            )
        holds = row["holds_capacity"]
        if t.releases_capacity and holds:
            await capacity.release(conn, row["pool_id"], row["quantity"])
            holds = False
        left_the_queue = state == WAITLISTED
        if left_the_queue:
            await capacity.leave_waitlist(conn, row["assistance_id"])
        delivered_at, follow_ups = row["delivered_at"], row["follow_up_dates"]
        if t.delivers:
            today = await conn.fetchval("SELECT (now() AT TIME ZONE $1)::date", PROGRAMME_TIME_ZONE)
            follow_ups = [today + timedelta(days=d) for d in plugin.follow_up_days]
        await conn.execute(
            """UPDATE assistance SET state = $2, active = $3, holds_capacity = $4,
                   attended_sessions = $5,
                   delivered_at = CASE WHEN $6 THEN now() ELSE delivered_at END,
                   follow_up_dates = $7, updated_at = now()
               WHERE assistance_id = $1""",
            row["assistance_id"],
            t.to_state,
            not plugin.all_states[t.to_state].terminal,
            holds,
            attended,
            t.delivers and delivered_at is None,
            follow_ups,
        )
        await capacity.record_event(
            conn, row["assistance_id"], state, t.to_state, t.action, actor, json.dumps(data)
        )
        await refresh_need(conn, row["need_id"], met=t.meets_need)
        # Places freed, or a head of the queue too large for them gone: those behind it
        # may fit now.
        if row["pool_id"] is not None and ((row["holds_capacity"] and not holds) or left_the_queue):
            await self._promote(conn, row["pool_id"], plugin, without_consent)

    async def _waiting_without_consent(self, pool_id: str | None) -> frozenset[str]:
        """The survivors waiting for the pool whose consent does not stand (withdrawn, or
        never registered with it): when a place comes free their waiting requests are
        cancelled (capacity.cancel_waiting) and the place goes on down the queue.
        UNAVAILABLE when eligibility cannot say. Read before the transaction: one who joins
        the queue meanwhile is not asked about (the same moment as a request's own check)."""
        if pool_id is None:
            return frozenset()
        waiting = await self.db.pool.fetch(
            """SELECT DISTINCT a.survivor_id FROM waitlist w
               JOIN assistance a USING (assistance_id) WHERE w.pool_id = $1""",
            pool_id,
        )
        return await self.consent.not_standing([r["survivor_id"] for r in waiting])

    async def _promote(
        self,
        conn: Connection,
        pool_id: str,
        plugin: AssistanceTypePlugin,
        without_consent: frozenset[str],
    ) -> None:
        for need_id in await capacity.cancel_waiting(conn, pool_id, without_consent):
            await refresh_need(conn, need_id)
        for promoted in await capacity.promote_waiting(conn, pool_id, plugin):
            need_id = await conn.fetchval(
                "SELECT need_id FROM assistance WHERE assistance_id = $1", promoted
            )
            await refresh_need(conn, need_id)

    async def GetAssistance(
        self, request: pb.GetAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAssistanceResponse:
        async with self.db.pool.acquire() as conn:
            found = await load_assistance(conn, request.assistance_id)
        if found is None:
            raise NotFound(
                f"assistance {request.assistance_id} not found", reason="ASSISTANCE_NOT_FOUND"
            )
        return pb.GetAssistanceResponse(assistance=found)

    async def ListAssistance(
        self, request: pb.ListAssistanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssistanceResponse:
        require_known_district_filter(request.district_code)
        await self._check_type_filter(request.type_id, "assistance")
        if request.state:
            self._check_state_filter(request.type_id, request.state)
        filters = {
            "survivor_id": request.survivor_id,
            "type_id": request.type_id,
            "state": request.state,
            "district_code": request.district_code,
            "pool_id": request.capacity_pool_id,
        }
        after = pagination.decode(request.page_token, filters, (pagination.int64,))
        size = pagination.page_size(request.page_size)
        rows = await self.db.pool.fetch(
            f"""{ASSISTANCE_SELECT}
                WHERE ($1 = '' OR a.survivor_id = $1) AND ($2 = '' OR a.type_id = $2)
                  AND ($3 = '' OR a.state = $3) AND ($4 = '' OR a.district_code = $4)
                  AND ($5 = '' OR a.pool_id = $5) AND ($6::bigint IS NULL OR a.ord > $6)
                ORDER BY a.ord LIMIT $7""",
            *filters.values(),
            after[0] if after else None,
            size + 1,
        )
        page = rows[:size]
        token = pagination.encode([page[-1]["ord"]], filters) if len(rows) > size else ""
        return pb.ListAssistanceResponse(
            assistance=[assistance_to_proto(r) for r in page], next_page_token=token
        )

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProvidersResponse:
        require_known_district_filter(request.district_code)
        await self._check_type_filter(request.type_id, "capacity_pools")
        filters = {"type_id": request.type_id, "district_code": request.district_code}
        after = pagination.decode(request.page_token, filters, (pagination.text,))
        size = pagination.page_size(request.page_size)
        async with self.db.pool.acquire() as conn:
            providers = await conn.fetch(
                """SELECT * FROM providers pr
                   WHERE ($1 = '' OR EXISTS (SELECT 1 FROM capacity_pools c
                          WHERE c.provider_id = pr.provider_id AND c.type_id = $1))
                     AND ($2 = '' OR pr.district_code = $2)
                     AND ($3::text IS NULL OR pr.provider_id > $3)
                   ORDER BY pr.provider_id LIMIT $4""",
                request.type_id,
                request.district_code,
                after[0] if after else None,
                size + 1,
            )
            page = providers[:size]
            pools = await conn.fetch(
                f"""SELECT {POOL_COLUMNS} FROM capacity_pools p
                    WHERE p.provider_id = ANY($1::text[]) AND ($2 = '' OR p.type_id = $2)
                    ORDER BY p.pool_id""",
                [p["provider_id"] for p in page],
                request.type_id,
            )
        token = (
            pagination.encode([page[-1]["provider_id"]], filters) if len(providers) > size else ""
        )
        return pb.ListProvidersResponse(
            providers=[
                pb.Provider(
                    provider_id=p["provider_id"],
                    name=text(p["name_en"], p["name_az"]),
                    kind=_PROVIDER_KINDS[p["kind"]],
                    district_code=p["district_code"],
                    pools=[pool_to_proto(c) for c in pools if c["provider_id"] == p["provider_id"]],
                )
                for p in page
            ],
            next_page_token=token,
        )

    async def GetDeliveryReport(
        self, request: pb.GetDeliveryReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDeliveryReportResponse:
        if request.type_id:
            self._plugin(request.type_id)
        as_of = date(request.as_of.year, request.as_of.month, request.as_of.day)
        # A day that has come: what is met or delivered by a later one is not known yet.
        not_after_today("as_of", as_of)
        rows = await self.db.pool.fetch(
            f"""WITH upto AS (
                    SELECT (($1::date + 1)::timestamp AT TIME ZONE '{PROGRAMME_TIME_ZONE}') AS t),
                n AS (
                    SELECT type_id, district_code, sex, age_band,
                           count(*) FILTER (WHERE met_at IS NULL OR met_at >= upto.t) AS open,
                           count(*) FILTER (WHERE met_at < upto.t) AS met
                    FROM needs, upto
                    WHERE created_at < upto.t AND ($2 = '' OR type_id = $2)
                    GROUP BY 1, 2, 3, 4),
                d AS (
                    SELECT type_id, district_code, sex, age_band, count(*) AS delivered
                    FROM assistance, upto
                    WHERE delivered_at < upto.t AND ($2 = '' OR type_id = $2)
                    GROUP BY 1, 2, 3, 4)
                SELECT type_id, district_code, sex, age_band, coalesce(n.open, 0) AS open,
                       coalesce(n.met, 0) AS met, coalesce(d.delivered, 0) AS delivered
                FROM n FULL JOIN d USING (type_id, district_code, sex, age_band)
                ORDER BY type_id, district_code, sex, age_band""",
            as_of,
            request.type_id,
        )
        return pb.GetDeliveryReportResponse(
            report=pb.DeliveryReport(
                as_of=request.as_of,
                rows=[
                    pb.DeliveryRow(
                        type_id=r["type_id"],
                        district_code=r["district_code"],
                        sex=r["sex"],
                        age_band=r["age_band"],
                        needs_open=r["open"],
                        needs_met=r["met"],
                        delivered=r["delivered"],
                    )
                    for r in rows
                ],
            )
        )

    async def CreateCapacityPool(
        self, request: pb.CreateCapacityPoolRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCapacityPoolResponse:
        plugin = self._plugin(request.type_id)
        if not plugin.uses_capacity:
            raise invalid(
                "type_id", f"{plugin.type_id} has no capacity to pool", "NO_CAPACITY_POOLS"
            )
        if plugin.course_length_from_pool and not request.sessions:
            raise invalid(
                "sessions",
                f"a {plugin.type_id} cohort needs its number of sessions",
                "SESSIONS_REQUIRED",
            )
        if request.sessions and not plugin.course_length_from_pool:
            raise invalid(
                "sessions",
                f"{plugin.type_id} does not take its course from a pool",
                "SESSIONS_NOT_ALLOWED",
            )
        if not request.name.en.strip() or not request.name.az.strip():
            raise invalid(
                "name", "a pool needs a name in English and in Azerbaijani", "NAME_NOT_BILINGUAL"
            )

        async def create(conn: Connection) -> pb.CreateCapacityPoolResponse:
            kind = await _provider_kind(conn, request.provider_id)
            _check_provider_kind(plugin, request.provider_id, kind)
            created = await capacity.insert_pool(
                conn,
                pool_id=request.pool_id,
                provider_id=request.provider_id,
                type_id=plugin.type_id,
                model=plugin.capacity_model,
                name_en=request.name.en,
                name_az=request.name.az,
                capacity=request.capacity,
                sessions=request.sessions or None,
                reason="pool opened",
            )
            if not created:
                raise AlreadyExists(
                    f"capacity pool {request.pool_id} already exists; choose another pool_id, "
                    "or change the existing pool's capacity with AdjustCapacity",
                    reason="POOL_ALREADY_EXISTS",
                    metadata={"pool_id": request.pool_id},
                )
            row = await capacity.pool_row(conn, request.pool_id)
            assert row is not None
            return pb.CreateCapacityPoolResponse(pool=pool_to_proto(row))

        return await once_per_request(self.db, request, pb.CreateCapacityPoolResponse, create)

    async def AdjustCapacity(
        self, request: pb.AdjustCapacityRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdjustCapacityResponse:
        # Places added are not given to those waiting whose consent no longer stands:
        # asked before the transaction, for a new request that adds places only.
        adds = request.delta > 0 and not await seen(self.db.pool, request.request_id)
        without_consent = (
            await self._waiting_without_consent(request.pool_id) if adds else frozenset()
        )

        async def adjust(conn: Connection) -> pb.AdjustCapacityResponse:
            row = await capacity.pool_row(conn, request.pool_id, lock=True)
            if row is None:
                raise NotFound(
                    f"capacity pool {request.pool_id} not found", reason="POOL_NOT_FOUND"
                )
            pool = capacity.Pool.of(row)
            if pool.capacity + request.delta > MAX_POOL_CAPACITY:
                raise invalid(
                    "delta",
                    f"would take pool {pool.pool_id} from {pool.capacity} to "
                    f"{pool.capacity + request.delta} units; a pool holds at most "
                    f"{MAX_POOL_CAPACITY}, so at most {MAX_POOL_CAPACITY - pool.capacity} "
                    "more can be added",
                    "CAPACITY_OVER_LIMIT",
                )
            if pool.capacity + request.delta < pool.reserved:
                raise FailedPrecondition(
                    f"only {pool.free} unit(s) of pool {pool.pool_id} are free"
                    + (
                        f"; its {pool.reserved} reserved unit(s) cannot be written off"
                        if pool.reserved
                        else f": it holds {pool.capacity}"
                    ),
                    reason="CAPACITY_RESERVED",
                )
            if request.delta < 0:
                # Under the pool's lock, so no request can join the waitlist meanwhile
                # (place_request, for its part, never queues more than the capacity).
                self._check_waitlist_fits(
                    pool, request.delta, await capacity.largest_waiting(conn, pool.pool_id)
                )
            await conn.execute(
                "UPDATE capacity_pools SET capacity = capacity + $2 WHERE pool_id = $1",
                pool.pool_id,
                request.delta,
            )
            await conn.execute(
                "INSERT INTO capacity_adjustments (pool_id, delta, reason) VALUES ($1, $2, $3)",
                pool.pool_id,
                request.delta,
                request.reason,
            )
            if request.delta > 0:
                await self._promote(
                    conn, pool.pool_id, self._installed(pool.type_id), without_consent
                )
            after = await capacity.pool_row(conn, pool.pool_id)
            assert after is not None
            return pb.AdjustCapacityResponse(pool=pool_to_proto(after))

        return await once_per_request(self.db, request, pb.AdjustCapacityResponse, adjust)

    @staticmethod
    def _check_waitlist_fits(pool: capacity.Pool, delta: int, largest: int) -> None:
        """A write-off never leaves the pool smaller than a request waiting for it: that
        one could never be served, and everyone behind it would wait for ever."""
        left = pool.capacity + delta
        if largest <= left:
            return
        most = max(pool.capacity - max(largest, pool.reserved), 0)
        raise FailedPrecondition(
            f"pool {pool.pool_id} would be left with {left} unit(s), but a request on its "
            f"waitlist needs {largest}, so it could never be served; at most {most} unit(s) "
            "can be written off while it waits",
            reason="WAITLIST_OVER_CAPACITY",
            metadata={"largest_waiting_quantity": str(largest), "capacity": str(pool.capacity)},
        )


def _over_capacity(pool_id: str, pool_capacity: int) -> InvalidArgument:
    return invalid(
        "quantity",
        f"more than pool {pool_id} can ever hold ({pool_capacity})",
        "QUANTITY_OVER_CAPACITY",
    )


async def attach(
    server: GuardedServer, db: Database, settings: Settings, resources: AsyncExitStack
) -> None:
    catalogue = load_catalogue()
    reference = capacity.load_reference_data(HERE / "reference.yaml")
    async with db.transaction() as conn:
        await capacity.seed_reference_data(conn, reference, catalogue)
    servicer = AssistanceServicer(db, catalogue, ConsentRegister.open(settings, resources))
    pb_grpc.add_AssistanceServiceServicer_to_server(servicer, server)


SPEC = ServiceSpec(
    name="assistance",
    full_name="mineaction.assistance.v1.AssistanceService",
    migrations_dir=HERE / "migrations",
    attach=attach,
    address=lambda settings: settings.assistance_address,
)


def _check_transition(plugin: AssistanceTypePlugin, t: Transition, row: asyncpg.Record) -> None:
    state = row["state"]
    if t.action == CANCEL and row["delivered_at"] is not None:
        # Its unit was handed over, its seat or course used: nothing goes back to the
        # pool, and the need it met stays met.
        finished = plugin.all_states[state].terminal if state in plugin.all_states else True
        raise FailedPrecondition(
            f"assistance {row['assistance_id']} was delivered on "
            f"{programme_date(row['delivered_at'])}: a delivered item is not cancelled"
            + (f" (it is {state})" if finished else "; record its follow-up"),
            reason="ALREADY_DELIVERED",
            metadata={"state": state, "action": t.action},
        )
    if state not in t.from_states:
        allowed = sorted({x.action for x in plugin.all_transitions if state in x.from_states})
        raise FailedPrecondition(
            f"cannot {t.action} assistance {row['assistance_id']} in state {state}; "
            f"allowed: {', '.join(allowed) or 'none (finished)'}",
            reason="ILLEGAL_TRANSITION",
            metadata={"state": state, "action": t.action, "allowed": ",".join(allowed)},
        )
