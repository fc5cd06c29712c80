"""Published rule-set versions: stored immutably, compiled once per process."""

from __future__ import annotations

from pathlib import Path

from services.common.db import Connection
from services.common.errors import NotFound
from services.eligibility import rules

SHIPPED = Path(__file__).parent / "rulesets"


class RuleBook:
    def __init__(self) -> None:
        self._compiled: dict[tuple[str, int], rules.RuleSet] = {}

    async def seed_shipped(self, conn: Connection) -> None:
        """Publish each shipped rule set as version 1 the first time the service starts."""
        for path in sorted(SHIPPED.glob("*.yaml")):
            source = path.read_text(encoding="utf-8")
            rule_set = rules.load(source)
            await conn.execute(
                """INSERT INTO rule_sets (rule_set_id, version, source_yaml, published_by,
                                          change_note)
                   VALUES ($1, 1, $2, 'system', 'shipped with the service')
                   ON CONFLICT DO NOTHING""",
                rule_set.rule_set_id,
                source,
            )

    async def latest_version(self, conn: Connection, rule_set_id: str) -> int:
        version = await conn.fetchval(
            "SELECT max(version) FROM rule_sets WHERE rule_set_id = $1", rule_set_id
        )
        if version is None:
            raise NotFound(f"rule set {rule_set_id} has no published version")
        return int(version)

    async def get(self, conn: Connection, rule_set_id: str, version: int) -> rules.RuleSet:
        key = (rule_set_id, version)
        if key not in self._compiled:
            source = await conn.fetchval(
                "SELECT source_yaml FROM rule_sets WHERE rule_set_id = $1 AND version = $2",
                rule_set_id,
                version,
            )
            if source is None:
                raise NotFound(f"rule set {rule_set_id} version {version} does not exist")
            # A published version stays readable whatever checks came after it.
            self._compiled[key] = rules.load(source, published=True)
        return self._compiled[key]
