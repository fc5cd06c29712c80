"""Values that pass every field's rules but that PostgreSQL cannot store: the NUL
character (U+0000) in text (refused by text columns and by jsonb alike), and a number that
is not finite (NaN, an infinity: JSON, and so jsonb, has none). A request carrying one is
refused as INVALID_ARGUMENT on that field, before any handler runs; it failed as INTERNAL
at the insert.

Text with a control character other than tab, line feed and carriage return (escape
U+001B, bell, backspace, delete, the C1 controls U+0080-U+009F) is refused the same way:
stored, it reached the terminals of staff reading statements and histories, where an
escape sequence can clear the screen, recolour it or forge a line.

A NUL shows in the request's encoding as a zero byte, so a request whose type has no text
field is walked only when its bytes hold one, or when its type has a floating-point field
(a NaN's bytes need hold no zero byte).
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import FieldViolation

NUL = "\x00"
# Controls but tab, line feed and carriage return; NUL has a message of its own.
_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_WALKED = (
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_STRING,
)


def may_hold_unstorable(request: Message) -> bool:
    return _must_walk(request.DESCRIPTOR) or b"\x00" in request.SerializeToString()


@cache
def _must_walk(descriptor: Descriptor) -> bool:
    """Whether a message of this type, at any depth, has a text field (a control
    character's bytes are not told apart from the encoding's own) or a floating-point
    one (a `data` object's numbers: a NaN's eight bytes need not hold a zero)."""
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for field in message.fields:
            if field.type in _WALKED:
                return True
            if field.message_type is not None:
                todo.append(field.message_type)
    return False


def unstorable_values(message: Message, path: str = "") -> list[FieldViolation]:
    """The fields of `message`, at any depth, holding a value PostgreSQL cannot store."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        return [
            v
            for key, value in message.fields.items()  # type: ignore[attr-defined]
            for v in _of_key(key, _joined(path, _shown(key)))
            + _of_value(value, _joined(path, _shown(key)))
        ]
    if name == "google.protobuf.ListValue":
        return [
            v
            for i, value in enumerate(message.values)  # type: ignore[attr-defined]
            for v in _of_value(value, f"{path}[{i}]")
        ]
    if name == "google.protobuf.Value":
        kind = message.WhichOneof("kind")
        return [] if kind is None else _of_value(getattr(message, kind), path)
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        at = _joined(path, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                found += _of_key(key, f"{at}[{_shown(key)}]") + _of_value(
                    item, f"{at}[{_shown(key)}]"
                )
        elif field.is_repeated:
            for i, item in enumerate(value):
                found += _of_value(item, f"{at}[{i}]")
        else:
            found += _of_value(value, at)
    return found


def _of_value(value: Any, path: str) -> list[FieldViolation]:
    if isinstance(value, Message):
        return unstorable_values(value, path)
    if isinstance(value, str) and NUL in value:
        return [
            FieldViolation(path, "must not contain the NUL character (U+0000)", "string.no_nul")
        ]
    if isinstance(value, str) and (control := _CONTROL.search(value)):
        return [
            FieldViolation(
                path,
                f"must not contain control characters (U+{ord(control.group()):04X} found): "
                "only tab and line breaks are allowed in text",
                "string.no_control",
            )
        ]
    if isinstance(value, float) and not math.isfinite(value):
        return [FieldViolation(path, "must be a finite number", "double.finite")]
    return []


def _of_key(key: Any, path: str) -> list[FieldViolation]:
    return _of_value(key, path) if isinstance(key, str) else []


_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KEPT = 64
_TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def kept(text: str, at: int = _KEPT) -> str:
    """A value a caller chose (an id, a name it acts for), as logs and audit entries keep
    it: spelled out, and cut to 64 characters (`at`) with its length said. A three-megabyte
    id filled the logs, and in the append-only audit log made every unfiltered page too
    large to send."""
    shown = spelled_out(text[:at])
    return shown if len(text) <= at else f"{shown}… ({len(text)} characters)"


def kept_trace_id(text: str) -> str:
    """An x-request-id header as logs keep it: an id (letters, digits and . _ : -, up to
    64) as given; anything else only described, as for a request_id."""
    return text if _TRACE_ID.fullmatch(text) else f"(not an id: {len(text)} characters)"


def kept_request_id(text: str) -> str:
    """A request_id as logs and audit entries keep it: a UUID (as every valid one is) as
    given; anything else, which validation refuses, only described, or free text put
    there (a name, a date of birth) would be logged as the caller wrote it."""
    return text if not text or _UUID.fullmatch(text) else f"(not a UUID: {len(text)} characters)"


def spelled_out(text: str) -> str:
    """`text` with any NUL written as the four characters \\x00, so that it can be stored
    (a refused request's ids in the audit log) or shown (a map key in a field path)."""
    return text.replace(NUL, "\\x00")


def _shown(key: Any) -> str:
    return kept(str(key))  # a map key is the caller's: kept short, as logs keep them


def _joined(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
