"""Delivery channels. The default writes each message as a JSON line to a file in the
state folder; an SMS gateway is a channel plugged in through the entry-point group
`mineaction.notification_channels` and chosen with NOTIFICATION_CHANNEL."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

ENTRY_POINT_GROUP = "mineaction.notification_channels"


@dataclass(frozen=True)
class OutgoingMessage:
    dedupe_key: str  # channels pass it on as the gateway's idempotency key
    kind: str
    recipient: str
    language: str
    text: str


class Channel(Protocol):
    async def send(self, message: OutgoingMessage) -> None: ...


class FileChannel:
    """Appends one JSON line per message: what a local cluster 'sends'."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    async def send(self, message: OutgoingMessage) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(message), ensure_ascii=False) + "\n")


def load_channel(name: str, state_dir: Path) -> Channel:
    if name == "file":
        return FileChannel(state_dir / "notifications.jsonl")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            factory = entry_point.load()
            channel: Channel = factory(state_dir)
            return channel
    raise ValueError(f"no notification channel named {name!r} is installed")
