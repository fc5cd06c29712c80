"""Whether a survivor's consent to data processing stands, as the eligibility service (the
survivor register) says. Assistance uses a survivor's data only while it does: a need is
recorded, and assistance requested (a referral to a provider among it), only for a
survivor registered with consent that has not been withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from services.common.config import Settings
from services.common.errors import consent_withdrawn, invalid
from services.common.group_commit import GroupCommit
from services.common.peers import ask, open_peer
from services.common.protoconv import from_proto_date

# The most survivors BatchGetConsents answers for in one call.
MAX_BATCH = 100


class ConsentRegister:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._eligibility = eligibility_grpc.EligibilityServiceStub(channel)
        # The checks that arrive while one call is out go together in the next, one call
        # at a time: two at once made smaller groups, and RequestAssistance slower under
        # load (docs/benchmarks.md, Assistance).
        self._checks: GroupCommit[str, eligibility_pb.SurvivorConsent | None] = GroupCommit(
            self._ask, max_batch=MAX_BATCH, in_flight=1
        )

    @classmethod
    def open(cls, settings: Settings, resources: AsyncExitStack) -> ConsentRegister:
        """Through the eligibility service, with this service's own token (role `service`)."""
        purpose = "assistance asks eligibility whether a survivor's consent stands"
        return cls(open_peer(settings, settings.eligibility_address, purpose, resources))

    async def require_consent(self, field: str, survivor_id: str) -> None:
        """Returns if the survivor's consent stands. INVALID_ARGUMENT on `field` for a
        survivor eligibility has not registered; FAILED_PRECONDITION (CONSENT_WITHDRAWN)
        while their consent stands withdrawn; UNAVAILABLE when eligibility cannot say."""
        consent = await self._checks.submit(survivor_id)
        if consent is None:
            raise invalid(
                field,
                f"survivor {survivor_id} is not registered: register them with their consent "
                "to data processing (eligibility) first",
                "UNKNOWN_SURVIVOR",
            )
        if not consent.stands:
            raise consent_withdrawn(from_proto_date(consent.withdrawal.withdrawn_on))

    async def not_standing(self, survivor_ids: Sequence[str]) -> frozenset[str]:
        """Those of `survivor_ids` whose consent does not stand: withdrawn, or never
        registered with it. UNAVAILABLE when eligibility cannot say."""
        consents = await asyncio.gather(*(self._checks.submit(s) for s in survivor_ids))
        return frozenset(
            s
            for s, consent in zip(survivor_ids, consents, strict=True)
            if consent is None or not consent.stands
        )

    async def _ask(
        self, survivor_ids: Sequence[str]
    ) -> list[eligibility_pb.SurvivorConsent | None]:
        """One call for a group of checks: each survivor's consent, None if unregistered."""
        answer: eligibility_pb.BatchGetConsentsResponse = await ask(
            self._eligibility.BatchGetConsents,
            eligibility_pb.BatchGetConsentsRequest(survivor_ids=list(dict.fromkeys(survivor_ids))),
            cannot_say="the eligibility service cannot say whether the survivor's consent stands",
            asking="assistance's BatchGetConsents to eligibility",
        )
        found = {consent.survivor_id: consent for consent in answer.consents}
        return [found.get(survivor_id) for survivor_id in survivor_ids]
