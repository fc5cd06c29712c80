"""Every Temporal payload inside a history (or any Temporal API message), found by
walking the protobuf, with the path that leads to it."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload

PAYLOAD = Payload.DESCRIPTOR.full_name


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """(path, payload) for each Payload in `message`, nested at any depth, in repeated
    fields and in map values (memo, headers, search attributes)."""
    if message.DESCRIPTOR.full_name == PAYLOAD:
        yield path, message  # type: ignore[misc]
        return
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        here = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is None:
                continue
            for key in value:
                yield from payloads_in(value[key], f"{here}[{key}]")
        elif fd.is_repeated:
            for i, item in enumerate(value):
                yield from payloads_in(item, f"{here}[{i}]")
        else:
            yield from payloads_in(value, here)


def is_search_attribute(path: str) -> bool:
    """Search attributes are indexed by the server, so Temporal never passes them to a
    payload codec; they must carry no personal data instead."""
    return "search_attributes" in path


# Marker details the SDK's core writes itself, never through the payload codec: a patch
# marker's patch id and a local activity marker's bookkeeping (sequence number, activity
# type, attempt, times). They carry no personal data; a local activity's result (the
# marker's `result`) goes through the codec like any other payload.
SDK_MARKER_METADATA = (
    "marker_recorded_event_attributes.details[patch-data]",
    "marker_recorded_event_attributes.details[data]",
)


def is_sdk_marker_metadata(path: str) -> bool:
    """A marker detail written by the SDK core, in clear in every worker's history."""
    return any(part in path for part in SDK_MARKER_METADATA)
