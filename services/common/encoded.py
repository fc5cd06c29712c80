"""Responses served in their wire form.

An answer that is mostly bytes the service already holds (an assessment's stored trace,
say) need not be parsed into a message only for gRPC to serialize it again: concatenated
encodings of one message type parse as the merge of the messages, so a response can be
put together from encoded parts. A handler returns it as an `Encoded`, and the
interceptor chain's response serializer (services/common/interceptors.py) sends its
bytes as they are; any other response is serialized as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def field(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2) holding `payload`: tag, varint length,
    payload. The only encoding written by hand; the payloads come from protobuf."""
    out = bytearray()
    for value in ((field_number << 3) | 2, len(payload)):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


class Encoded(Generic[M]):
    """A `message_type` message as its encoding."""

    __slots__ = ("data", "message_type")

    def __init__(self, message_type: type[M], data: bytes) -> None:
        self.message_type = message_type
        self.data = data

    def message(self) -> M:
        return self.message_type.FromString(self.data)


def holding(
    message_type: type[M], field_name: str, *payloads: bytes, rest: M | None = None
) -> Encoded[M]:
    """A `message_type` message whose message field `field_name` is `payloads`, each one
    message encoded (several for a repeated field), with `rest`'s other fields."""
    number = message_type.DESCRIPTOR.fields_by_name[field_name].number
    data = b"".join([field(number, payload) for payload in payloads])
    if rest is not None:
        data += rest.SerializeToString()
    return Encoded(message_type, data)


def served(message_type: type[M], response: M | Encoded[M]) -> M:
    """What a handler returns for `response`: its encoding goes out as it is. Typed as
    the message the servicer's signature promises, which is what the caller receives."""
    if type(response) is Encoded and response.message_type is not message_type:
        raise TypeError(f"{response.message_type.__name__} served as {message_type.__name__}")
    return cast(M, response)


def serializer_passing_encoded(
    serialize: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    """`serialize`, except that an Encoded response is sent as it is."""
    if serialize is None:
        return None

    def serialize_response(response: Any) -> bytes:
        if type(response) is Encoded:
            return response.data
        return serialize(response)

    return serialize_response
