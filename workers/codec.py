"""Temporal payload encryption: AES-256-GCM over the whole payload, keys from a keyring.

Every payload a client or worker hands to Temporal (workflow and activity inputs and
results, signals, updates, queries, memo, heartbeat details, failure details) passes
this codec, so the Temporal server, its database and anyone with the Web UI see only
ciphertext. An encrypted payload has:

- metadata ``encoding: binary/encrypted`` and ``encryption-key-id: <key id>``;
- data ``nonce (12 bytes) || AES-GCM(original payload, serialized with its metadata)``,
  with the key id as associated data, so a payload cannot be moved to another key id.

The keyring is a JSON file of AES-256 keys by id, one of them active for new payloads;
older keys stay so that data encrypted under them still decrypts. A payload that is not
encrypted passes decoding unchanged (histories recorded before encryption still replay).

    python -m workers.codec init     # create the keyring if missing (mode 0600)
    python -m workers.codec rotate   # add a new active key, keep the old ones
    python -m workers.codec show     # key ids and which one is active (never the keys)

The file comes from ``PAYLOAD_KEYS_FILE``, default ``$MINEACTION_STATE_DIR/payload-keys.json``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from services.common.config import ConfigError, Settings, load_settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12  # 96 bits, fresh for every payload
KEY_BYTES = 32  # AES-256
KEYRING_VERSION = 1


class CodecError(ValueError):
    """A payload that cannot be decrypted, or a keyring that cannot be used."""


class KeyringError(CodecError):
    """The keyring file is missing, unreadable or malformed."""


class UnknownKeyError(CodecError):
    """A payload was encrypted under a key id this keyring does not hold."""


@dataclass(frozen=True)
class Keyring:
    """AES-256 keys by id; `active` encrypts new payloads, every key decrypts."""

    active: str
    keys: Mapping[str, bytes]
    created: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyringError(f"the active key id {self.active!r} is not among the keys")
        for key_id, key in self.keys.items():
            if not key_id or len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256)")

    @classmethod
    def generate(cls) -> Keyring:
        key_id = new_key_id()
        return cls(key_id, {key_id: AESGCM.generate_key(bit_length=256)}, {key_id: _now()})

    def rotated(self) -> Keyring:
        """A keyring with a new active key and every old key kept."""
        key_id = new_key_id()
        while key_id in self.keys:  # pragma: no cover - 32 random bits in the same second
            key_id = new_key_id()
        return Keyring(
            key_id,
            {**self.keys, key_id: AESGCM.generate_key(bit_length=256)},
            {**self.created, key_id: _now()},
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": KEYRING_VERSION,
                "active": self.active,
                "keys": {
                    key_id: {
                        "key": base64.b64encode(key).decode(),
                        "created": self.created.get(key_id, ""),
                    }
                    for key_id, key in self.keys.items()
                },
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "keyring") -> Keyring:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise KeyringError(f"{source}: not JSON ({error})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), dict):
            raise KeyringError(f'{source}: expected {{"active": ..., "keys": {{...}}}}')
        if raw.get("version", KEYRING_VERSION) != KEYRING_VERSION:
            raise KeyringError(f"{source}: unsupported keyring version {raw.get('version')!r}")
        keys: dict[str, bytes] = {}
        created: dict[str, str] = {}
        for key_id, entry in raw["keys"].items():
            material = entry.get("key") if isinstance(entry, dict) else None
            if not isinstance(material, str):
                raise KeyringError(f"{source}: key {key_id!r} has no base64 'key'")
            try:
                keys[key_id] = base64.b64decode(material, validate=True)
            except binascii.Error:
                raise KeyringError(f"{source}: key {key_id!r} is not valid base64") from None
            created[key_id] = str(entry.get("created", ""))
        active = raw.get("active")
        if not isinstance(active, str):
            raise KeyringError(f"{source}: 'active' must name a key id")
        try:
            return cls(active, keys, created)
        except KeyringError as error:
            raise KeyringError(f"{source}: {error}") from None


def new_key_id() -> str:
    return f"k{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the keyring file ------------------------------------------------------------------


def load_keyring(path: Path) -> Keyring:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringError(
            f"no payload keyring at {path}: use the cluster's (`make run` creates it in its "
            "state folder: run from the cluster's folder, or set MINEACTION_STATE_DIR or "
            "PAYLOAD_KEYS_FILE), or for a new cluster create one with "
            "`python -m workers.codec init`"
        ) from None
    except OSError as error:
        raise KeyringError(f"cannot read the payload keyring at {path}: {error}") from None
    return Keyring.from_json(text, source=str(path))


def _write_new_file(path: Path, keyring: Keyring) -> str:
    """Write the keyring to a fresh 0600 file next to `path`; return its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(keyring.to_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return name


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Replace the file atomically; it is only ever readable by its owner."""
    name = _write_new_file(path, keyring)
    os.replace(name, path)


def ensure_keyring(path: Path) -> tuple[Keyring, bool]:
    """The keyring at `path`, created (mode 0600) if there is none. Safe when several
    processes start together: exactly one file wins and everyone uses it."""
    if path.exists():
        return load_keyring(path), False
    name = _write_new_file(path, Keyring.generate())
    try:
        os.link(name, path)  # fails if another process created it first
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(name)
    return load_keyring(path), created


def rotate_keyring(path: Path) -> Keyring:
    """Add a new active key to the keyring at `path`, keeping every older key."""
    rotated = load_keyring(path).rotated()
    save_keyring(path, rotated)
    return rotated


# --- the codec -------------------------------------------------------------------------


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """AES-GCM payload codec. With a `path`, a payload under a key id it does not know
    makes it re-read the keyring once, so a rotation done while it runs is picked up."""

    def __init__(self, keyring: Keyring, path: Path | None = None) -> None:
        self._keyring = keyring
        self._path = path
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @classmethod
    def from_file(cls, path: Path) -> EncryptionCodec:
        return cls(load_keyring(path), path)

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._keyring.active
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not ours: written before encryption, passes unchanged
        raw_id = payload.metadata.get(KEY_ID_METADATA)
        if raw_id is None:
            raise CodecError(f"encrypted payload without {KEY_ID_METADATA!r} metadata")
        key_id = raw_id.decode(errors="replace")
        cipher = self._cipher(key_id)
        if len(payload.data) <= NONCE_BYTES:
            raise CodecError(f"encrypted payload under key {key_id!r} is truncated")
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], raw_id)
        except InvalidTag:
            raise CodecError(
                f"payload under key {key_id!r} failed authentication: it was altered, "
                "or that key id holds a different key than the one that encrypted it"
            ) from None
        original = Payload()
        original.ParseFromString(plain)
        return original

    def _cipher(self, key_id: str) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None and self._path is not None:
            try:
                reloaded = load_keyring(self._path)
            except KeyringError:
                reloaded = self._keyring
            if key_id in reloaded.keys:
                self._keyring = reloaded
                self._ciphers = {k: AESGCM(v) for k, v in reloaded.keys.items()}
                cipher = self._ciphers[key_id]
        if cipher is None:
            where = f" at {self._path}" if self._path is not None else ""
            raise UnknownKeyError(
                f"payload encrypted under key id {key_id!r}, which is not in the keyring"
                f"{where} (it holds {', '.join(sorted(self._keyring.keys))})"
            )
        return cipher


def data_converter_for(
    codec: temporalio.converter.PayloadCodec,
) -> temporalio.converter.DataConverter:
    """Temporal's default converter with `codec`. Failure messages and stack traces move
    into an encoded attributes payload, so the codec encrypts them too (by default they
    sit in the history in clear, and an error message can quote personal data)."""
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=codec,
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter(settings: Settings) -> temporalio.converter.DataConverter:
    """Temporal's default converter with this cluster's encryption codec. The keyring
    must exist (`make run` creates it in its state folder at start): a client that made
    its own, run from another folder, would start journeys no worker could read."""
    return data_converter_for(EncryptionCodec.from_file(settings.effective_payload_keys_file))


# --- command line ----------------------------------------------------------------------


def _describe(keyring: Keyring, path: Path) -> str:
    lines = [f"payload keyring {path}"]
    for key_id in sorted(keyring.keys, key=lambda k: keyring.created.get(k, "")):
        mark = "active" if key_id == keyring.active else "decrypt only"
        lines.append(f"  {key_id}  {keyring.created.get(key_id, '?'):25}  {mark}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.codec", description="Manage the Temporal payload keyring."
    )
    parser.add_argument(
        "command",
        choices=("init", "rotate", "show"),
        help="init: create if missing; rotate: add a new active key; show: list key ids",
    )
    parser.add_argument(
        "--file", type=Path, help="keyring file (default: PAYLOAD_KEYS_FILE or the state dir)"
    )
    args = parser.parse_args(argv)
    try:
        path: Path = args.file or load_settings().effective_payload_keys_file
        if args.command == "init":
            keyring, created = ensure_keyring(path)
            print(("created " if created else "kept existing ") + _describe(keyring, path))
        elif args.command == "rotate":
            keyring = rotate_keyring(path)
            print(
                f"rotated: new payloads use {keyring.active}; running workers and the codec "
                "server switch when they first meet a payload under it (restart them to "
                "switch at once)"
            )
            print(_describe(keyring, path))
        else:
            print(_describe(load_keyring(path), path))
    except (ConfigError, KeyringError) as error:
        print(f"codec: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
