"""Whether a survivor's consent to data processing stands, as the eligibility service (the
survivor register) says. Assistance uses a survivor's data only while it does: a need is
recorded, and assistance requested (a referral to a provider among it), only for a
survivor registered with consent that has not been withdrawn."""

from __future__ import annotations

from contextlib import AsyncExitStack

import grpc

from mineaction.eligibility.v1 import eligibility_service_pb2 as eligibility_pb
from mineaction.eligibility.v1 import eligibility_service_pb2_grpc as eligibility_grpc
from services.common.config import Settings
from services.common.errors import consent_withdrawn, invalid
from services.common.peers import ask, open_peer
from services.common.protoconv import from_proto_date


class ConsentRegister:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._eligibility = eligibility_grpc.EligibilityServiceStub(channel)

    @classmethod
    def open(cls, settings: Settings, resources: AsyncExitStack) -> ConsentRegister:
        """Through the eligibility service, with this service's own token (role `service`)."""
        purpose = "assistance asks eligibility whether a survivor's consent stands"
        return cls(open_peer(settings, settings.eligibility_address, purpose, resources))

    async def require_consent(self, field: str, survivor_id: str) -> None:
        """Returns if the survivor's consent stands. INVALID_ARGUMENT on `field` for a
        survivor eligibility has not registered; FAILED_PRECONDITION (CONSENT_WITHDRAWN)
        while their consent stands withdrawn; UNAVAILABLE when eligibility cannot say."""
        answer: eligibility_pb.GetConsentResponse = await ask(
            self._eligibility.GetConsent,
            eligibility_pb.GetConsentRequest(survivor_id=survivor_id),
            unknown=invalid(
                field,
                f"survivor {survivor_id} is not registered: register them with their consent "
                "to data processing (eligibility) first",
                "UNKNOWN_SURVIVOR",
            ),
            cannot_say=(
                f"the eligibility service cannot say whether survivor {survivor_id}'s "
                "consent stands"
            ),
            asking="assistance's GetConsent to eligibility",
        )
        if not answer.consent.stands:
            raise consent_withdrawn(from_proto_date(answer.consent.withdrawal.withdrawn_on))
