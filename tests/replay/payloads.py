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
