"""Reading and converting the assistance service's rows, and the plugin declarations,
to their protobuf messages; validating type-specific data against a plugin's schema."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import asyncpg
import jsonschema
from google.protobuf import json_format, struct_pb2

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.type.v1 import localized_text_pb2
from services.assistance.catalogue import AssistanceTypePlugin
from services.common.db import Connection
from services.common.errors import FieldViolation, InvalidArgument
from services.common.protoconv import proto_date, timestamp
from services.common.storable import kept

CAPACITY_TO_PROTO = {
    "stock": pb.CAPACITY_MODEL_STOCK,
    "seats": pb.CAPACITY_MODEL_SEATS,
    "session_slots": pb.CAPACITY_MODEL_SESSION_SLOTS,
    "none": pb.CAPACITY_MODEL_NONE,
}

# The waitlist position is derived, so it can never be stale or have gaps.
ASSISTANCE_SELECT = """
    SELECT a.*, coalesce((SELECT count(*) FROM waitlist w2
                          WHERE w2.pool_id = w.pool_id AND w2.seq <= w.seq), 0)::int
                AS waitlist_position
    FROM assistance a LEFT JOIN waitlist w ON w.assistance_id = a.assistance_id"""


# A need with the assistance requested for it, oldest first (one indexed lookup per need).
NEED_SELECT = """
    SELECT n.*, array(SELECT a.assistance_id FROM assistance a
                      WHERE a.need_id = n.need_id ORDER BY a.ord) AS assistance_ids
    FROM needs n"""


def text(en: str, az: str) -> localized_text_pb2.LocalizedText:
    return localized_text_pb2.LocalizedText(en=en, az=az)


def _schema_json(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, ensure_ascii=False, sort_keys=True)


def type_to_proto(plugin: AssistanceTypePlugin) -> pb.AssistanceType:
    return pb.AssistanceType(
        type_id=plugin.type_id,
        name=text(plugin.name_en, plugin.name_az),
        capacity_model=CAPACITY_TO_PROTO[plugin.capacity_model],
        states=[
            pb.LifecycleState(
                state_id=s.state_id, name=text(s.name_en, s.name_az), terminal=s.terminal
            )
            for s in plugin.all_states.values()
        ],
        transitions=[
            pb.Transition(
                from_state=from_state,
                to_state=t.to_state,
                action=t.action,
                data_schema_json=_schema_json(t.data_schema),
                releases_capacity=t.releases_capacity,
                delivers=t.delivers,
                meets_need=t.meets_need,
                records_attendance=t.records_attendance,
                requires_full_attendance=t.requires_full_attendance,
            )
            for t in plugin.all_transitions
            for from_state in t.from_states
        ],
        follow_up_days=plugin.follow_up_days,
        data_schema_json=_schema_json(plugin.data_schema),
        initial_state=plugin.initial_state,
        eligibility_rules_yaml=plugin.eligibility_rules_yaml,
        provider_kinds=[pb.ProviderKind.Value(f"PROVIDER_KIND_{k}") for k in plugin.provider_kinds],
    )


def need_to_proto(row: asyncpg.Record) -> pb.Need:
    return pb.Need(
        need_id=row["need_id"],
        survivor_id=row["survivor_id"],
        type_id=row["type_id"],
        state=pb.NeedState.Value(f"NEED_STATE_{row['state']}"),
        description=row["description"],
        assessed_by=row["assessed_by"],
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        district_code=row["district_code"],
        sex=row["sex"],
        age_band=row["age_band"],
        assistance_ids=row.get("assistance_ids") or (),
    )


def _plain(value: Any) -> Any:
    """Struct numbers are doubles: give whole numbers back as ints, so that stored data
    and schema checks see 3, not 3.0."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _plain(json_format.MessageToDict(struct))
    return result


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _violation_path(field: str, error: jsonschema.ValidationError) -> str:
    path = field
    for part in error.absolute_path:  # keys are the caller's: kept short, as logs keep them
        path += f"[{part}]" if isinstance(part, int) else f".{kept(str(part))}"
    if error.validator == "required" and isinstance(error.validator_value, list):
        # One error per missing property: point at the property itself.
        missing = next(
            (p for p in error.validator_value if error.message.startswith(repr(p))), None
        )
        if missing is not None:
            path += f".{missing}"
    return path


# What each schema keyword asks for, in words taken from the schema only: jsonschema's own
# messages quote the rejected value, which may be personal data, and refusals are logged.
_RULES: dict[str, str] = {
    "type": "must be of type {}",
    "enum": "must be one of {}",
    "const": "must be {}",
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "exclusiveMinimum": "must be more than {}",
    "exclusiveMaximum": "must be less than {}",
    "minLength": "must be at least {} characters long",
    "maxLength": "must be at most {} characters long",
    "pattern": "must match the pattern {}",
    "format": "must be a valid {}",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "uniqueItems": "must not repeat items",
    "required": "is required",
}


# Undeclared properties named in a refusal: the caller's, so a handful, not thousands.
_NAMED = 5


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        # Property names are the caller's field names, not their values: name them.
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        declared = schema.get("properties", {})
        extra = sorted(kept(str(key)) for key in error.instance if key not in declared)
        named = ", ".join(extra[:_NAMED]) + (
            f" and {len(extra) - _NAMED} more" if len(extra) > _NAMED else ""
        )
        return f"has properties the assistance type does not declare: {named}"
    rule = _RULES.get(str(error.validator), "does not satisfy the schema's {} rule")
    value = error.validator_value if error.validator in _RULES else error.validator
    return rule.format(value)


def check_data(
    validator: jsonschema.protocols.Validator, data: Mapping[str, Any], field: str = "data"
) -> None:
    """INVALID_ARGUMENT with one field violation per way the data breaks the schema."""
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        violations = [
            FieldViolation(_violation_path(field, e), _describe(e), f"schema.{e.validator}")
            for e in errors
        ]
        raise InvalidArgument(
            f"{field} does not match the assistance type's declaration: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations[:5]),
            violations,
        )


def pool_to_proto(row: asyncpg.Record) -> pb.CapacityPool:
    return pb.CapacityPool(
        pool_id=row["pool_id"],
        type_id=row["type_id"],
        model=CAPACITY_TO_PROTO[row["model"]],
        capacity=row["capacity"],
        reserved=row["reserved"],
        free=row["capacity"] - row["reserved"],
        waitlisted=row["waitlisted"],
        name=text(row["name_en"], row["name_az"]),
        provider_id=row["provider_id"],
        sessions=row["sessions"] or 0,
    )


def assistance_to_proto(
    row: asyncpg.Record, events: list[dict[str, Any]] | None = None
) -> pb.Assistance:
    message = pb.Assistance(
        assistance_id=row["assistance_id"],
        need_id=row["need_id"],
        survivor_id=row["survivor_id"],
        type_id=row["type_id"],
        state=row["state"],
        provider_id=row["provider_id"] or "",
        capacity_pool_id=row["pool_id"] or "",
        waitlist_position=row["waitlist_position"],
        data=dict_to_struct(json.loads(row["data"])),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
        quantity=row["quantity"],
        course_length=row["course_length"] or 0,
        attended_sessions=row["attended_sessions"],
        referral_consent=row["referral_consent"],
        follow_up_dates=[proto_date(d) for d in row["follow_up_dates"]],
    )
    if row["delivered_at"] is not None:
        message.delivery_time.CopyFrom(timestamp(row["delivered_at"]))
    for e in events or ():
        event = pb.AssistanceEvent(
            from_state=e["from_state"],
            to_state=e["to_state"],
            action=e["action"],
            actor=e["actor"],
            data=dict_to_struct(e["data"]),
        )
        event.time.FromJsonString(e["at"])
        message.history.append(event)
    return message


async def load_assistance(conn: Connection, assistance_id: str) -> pb.Assistance | None:
    """One assistance with its history, in one round trip (it runs under pool locks)."""
    row = await conn.fetchrow(
        f"""{ASSISTANCE_SELECT.replace("SELECT a.*", "SELECT a.*, h.history", 1)}
            CROSS JOIN LATERAL (
                SELECT coalesce(json_agg(json_build_object(
                           'from_state', e.from_state, 'to_state', e.to_state,
                           'action', e.action, 'actor', e.actor, 'at', e.at,
                           'data', e.data) ORDER BY e.seq), '[]') AS history
                FROM assistance_events e WHERE e.assistance_id = a.assistance_id) h
            WHERE a.assistance_id = $1""",
        assistance_id,
    )
    if row is None:
        return None
    return assistance_to_proto(row, json.loads(row["history"]))
