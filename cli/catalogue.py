"""The assistance catalogue as the assistance service publishes it: an assistance plan
or a provider's step is checked against its type's lifecycle and JSON Schemas before
anything is started or sent, so a plan the service would refuse is refused here."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import jsonschema

from cli.inputs import BadInput
from cli.paging import pages
from mineaction.assistance.v1 import assistance_service_pb2 as assistance_pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as assistance_grpc
from mineaction.type.v1 import localized_text_pb2


@dataclass(frozen=True)
class Catalogue:
    types: dict[str, assistance_pb.AssistanceType]
    providers: dict[str, assistance_pb.Provider]

    def type(self, type_id: str) -> assistance_pb.AssistanceType:
        found = self.types.get(type_id)
        if found is None:
            raise BadInput(
                f"unknown assistance type {type_id!r}: the catalogue has "
                f"{', '.join(sorted(self.types)) or 'none'}"
            )
        return found

    def type_name(self, type_id: str, lang: str) -> str | None:
        """The type's name in `lang` ("en" or "az"); None for a type not in the catalogue."""
        found = self.types.get(type_id)
        return _in(found.name, lang) if found else None

    def state_name(self, type_id: str, state_id: str, lang: str) -> str | None:
        """A lifecycle state's name in `lang`, as the type declares it (the core's own
        waitlisted and cancelled too); None for one the catalogue does not know."""
        state = self._state(type_id, state_id)
        return _in(state.name, lang) if state else None

    def is_terminal(self, type_id: str, state_id: str) -> bool:
        """The item's lifecycle has ended in this state (followed up, cancelled, ...)."""
        state = self._state(type_id, state_id)
        return bool(state and state.terminal)

    def _state(self, type_id: str, state_id: str) -> assistance_pb.LifecycleState | None:
        found = self.types.get(type_id)
        return next((s for s in found.states if s.state_id == state_id), None) if found else None

    def check_plan(self, type_id: str, data: dict[str, Any], provider: str, pool: str) -> None:
        """A new assistance item: its request data against the type's schema, and the
        provider and capacity pool it names, as the service would check them."""
        kind = self.type(type_id)
        _check(kind.data_schema_json, data, f"--data for {type_id}")
        if provider and provider not in self.providers:
            raise BadInput(
                f"unknown provider {provider!r}: the providers are "
                f"{', '.join(sorted(self.providers)) or 'none'}"
            )
        if kind.capacity_model == assistance_pb.CAPACITY_MODEL_NONE:
            if pool:
                raise BadInput(f"{type_id} has no capacity pools: give no pool")
            return
        pools = {  # this type's pools, at the provider named, else anywhere
            p.pool_id: owner
            for owner, found in self.providers.items()
            if owner == provider or not provider
            for p in found.pools
            if p.type_id == type_id
        }
        at = f" at provider {provider!r}" if provider else ""
        if not pools:
            raise BadInput(f"no {type_id} capacity pool{at}")
        if pool and pool not in pools:
            raise BadInput(
                f"unknown {type_id} capacity pool {pool!r}{at}: the pools are "
                f"{', '.join(sorted(pools))}"
            )

    def check_step(self, type_id: str, action: str, data: dict[str, Any]) -> None:
        """A lifecycle action the type declares (or the core's cancel), with its data."""
        kind = self.type(type_id)
        transitions = [t for t in kind.transitions if t.action == action]
        actions = sorted({t.action for t in kind.transitions} | {"cancel"})
        if action == "cancel":
            if data:
                raise BadInput("cancel takes no --data")
            return
        if not transitions:
            raise BadInput(f"{type_id} has no action {action!r}: use one of {', '.join(actions)}")
        _check(transitions[0].data_schema_json, data, f"--data for {action}")


def _in(text: localized_text_pb2.LocalizedText, lang: str) -> str | None:
    return (text.az if lang == "az" else text.en) or text.en or None


def _check(schema_json: str, data: dict[str, Any], what: str) -> None:
    if not schema_json:
        return
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = sorted(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(data), key=str)
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path)
        at = f"{where}: " if where else ""
        raise BadInput(f"{what} is refused by the type's schema: {at}{first.message}")


async def load(stub: assistance_grpc.AssistanceServiceStub, seconds: float) -> Catalogue:
    def fetch(token: str) -> Awaitable[assistance_pb.ListAssistanceTypesResponse]:
        request = assistance_pb.ListAssistanceTypesRequest(page_size=500, page_token=token)
        return stub.ListAssistanceTypes(request, timeout=seconds)  # type: ignore[no-any-return]

    def fetch_providers(token: str) -> Awaitable[assistance_pb.ListProvidersResponse]:
        request = assistance_pb.ListProvidersRequest(page_size=500, page_token=token)
        return stub.ListProviders(request, timeout=seconds)  # type: ignore[no-any-return]

    return Catalogue(
        {kind.type_id: kind async for page in pages(fetch) for kind in page.assistance_types},
        {p.provider_id: p async for page in pages(fetch_providers) for p in page.providers},
    )
