"""The assistance catalogue: every assistance type is a plugin, found through the
`mineaction.assistance_types` entry-point group, so a new type needs no core change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Literal

ENTRY_POINT_GROUP = "mineaction.assistance_types"

CapacityModel = Literal["stock", "seats", "session_slots", "none"]


@dataclass(frozen=True)
class AssistanceTypePlugin:
    """What a plugin declares about its assistance type."""

    type_id: str
    name_en: str
    name_az: str
    capacity_model: CapacityModel
    states: tuple[str, ...] = ()
    follow_up_days: tuple[int, ...] = ()
    extras: Mapping[str, object] = field(default_factory=dict)


def load_catalogue() -> dict[str, AssistanceTypePlugin]:
    """Every installed assistance type, keyed by type id."""
    catalogue: dict[str, AssistanceTypePlugin] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        plugin = entry_point.load()
        if not isinstance(plugin, AssistanceTypePlugin):
            raise TypeError(f"entry point {entry_point.name} is not an AssistanceTypePlugin")
        if plugin.type_id in catalogue:
            raise ValueError(f"two plugins declare assistance type {plugin.type_id}")
        catalogue[plugin.type_id] = plugin
    return catalogue
