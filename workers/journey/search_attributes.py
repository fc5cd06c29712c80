"""The journey's search attributes, registered at start and filterable in the Web UI.

They never carry personal data: only the stage, district code, loan status, days past
due and programme year.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

STAGE = SearchAttributeKey.for_keyword("Stage")
DISTRICT_CODE = SearchAttributeKey.for_keyword("DistrictCode")
LOAN_STATUS = SearchAttributeKey.for_keyword("LoanStatus")
DAYS_PAST_DUE = SearchAttributeKey.for_int("DaysPastDue")
PROGRAMME_YEAR = SearchAttributeKey.for_int("ProgrammeYear")

ALL: tuple[SearchAttributeKey, ...] = (  # type: ignore[type-arg]
    STAGE,
    DISTRICT_CODE,
    LOAN_STATUS,
    DAYS_PAST_DUE,
    PROGRAMME_YEAR,
)

_INDEXED_TYPE = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` flags that register the attributes at start."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={_type_name(key)}"]
    return flags


def _type_name(key: SearchAttributeKey) -> str:  # type: ignore[type-arg]
    return "Int" if key.indexed_value_type == SearchAttributeIndexedValueType.INT else "Keyword"


async def register(client: Client, namespace: str) -> list[str]:
    """Register any missing attributes on an existing cluster; return those added."""
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = set(existing.custom_attributes) | set(existing.system_attributes)
    except RPCError as error:  # the time-skipping test server can only add
        if error.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        known = set()
    missing = {key.name: _INDEXED_TYPE[_type_name(key)] for key in ALL if key.name not in known}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)
