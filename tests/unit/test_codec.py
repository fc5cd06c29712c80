"""The payload codec and its keyring: what a payload looks like once encrypted, that it
comes back whole, that rotation keeps old payloads readable, and that every kind of bad
key material is refused with a message naming the problem."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from services.common.config import ConfigError, load_settings
from workers.codec import (
    ENCODING,
    KEY_ID_METADATA,
    NONCE_BYTES,
    CodecError,
    EncryptionCodec,
    Keyring,
    KeyringError,
    UnknownKeyError,
    data_converter,
    data_converter_for,
    ensure_keyring,
    load_keyring,
    rotate_keyring,
)
from workers.journey.worker import connect

NAME = "Elnur Məmmədov"
PHONE = "+994 50 123 45 67"


@dataclass(frozen=True)
class Intake:
    name: str
    phone: str
    born: str


def plain(text: str = f"{NAME} {PHONE}") -> Payload:
    return Payload(
        metadata={"encoding": b"json/plain", "messageType": b"x"},
        data=json.dumps(text).encode(),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_an_encrypted_payload_hides_everything_and_comes_back_whole() -> None:
    codec = EncryptionCodec(Keyring.generate())
    original = plain()
    [sealed] = await codec.encode([original])
    assert dict(sealed.metadata) == {
        "encoding": ENCODING,
        KEY_ID_METADATA: codec.keyring.active.encode(),
    }
    # Neither the data nor the original metadata is readable.
    assert NAME.encode() not in sealed.data and b"json/plain" not in sealed.data
    assert PHONE.encode() not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == original


async def test_every_payload_gets_a_fresh_nonce() -> None:
    codec = EncryptionCodec(Keyring.generate())
    first, second = await codec.encode([plain(), plain()])
    assert first.data[:NONCE_BYTES] != second.data[:NONCE_BYTES]
    assert first.data != second.data


async def test_the_data_converter_round_trips_a_dataclass() -> None:
    converter = data_converter_for(EncryptionCodec(Keyring.generate()))
    value = Intake(NAME, PHONE, "1981-05-14")
    [sealed] = await converter.encode([value])
    assert sealed.metadata["encoding"] == ENCODING
    assert b"1981-05-14" not in sealed.data
    assert await converter.decode([sealed], [Intake]) == [value]


async def test_failure_messages_are_encrypted_too() -> None:
    """An error message can quote what a user typed: it must not sit in clear."""
    converter = data_converter_for(EncryptionCodec(Keyring.generate()))
    failure = Failure()
    await converter.encode_failure(ApplicationError(f"no phone {PHONE} for {NAME}"), failure)
    assert NAME.encode() not in failure.SerializeToString()
    assert PHONE.encode() not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    error = await converter.decode_failure(failure)
    assert str(error) == f"no phone {PHONE} for {NAME}"


async def test_a_payload_that_is_not_encrypted_passes_unchanged() -> None:
    codec = EncryptionCodec(Keyring.generate())
    original = plain()
    assert await codec.decode([original]) == [original]


async def test_an_unknown_key_id_is_a_clear_error() -> None:
    mine, theirs = EncryptionCodec(Keyring.generate()), EncryptionCodec(Keyring.generate())
    [sealed] = await theirs.encode([plain()])
    with pytest.raises(UnknownKeyError) as caught:
        await mine.decode([sealed])
    assert theirs.keyring.active in str(caught.value)
    assert "not in the keyring" in str(caught.value)


async def test_tampered_or_relabelled_payloads_are_refused() -> None:
    keyring = Keyring.generate().rotated()
    codec = EncryptionCodec(keyring)
    [sealed] = await codec.encode([plain()])

    flipped = Payload()
    flipped.CopyFrom(sealed)
    flipped.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(CodecError, match="failed authentication"):
        await codec.decode([flipped])

    # The key id is bound to the ciphertext: naming another key of the ring fails.
    other = next(k for k in keyring.keys if k != keyring.active)
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = other.encode()
    with pytest.raises(CodecError, match="failed authentication"):
        await codec.decode([relabelled])

    truncated = Payload(metadata=sealed.metadata, data=sealed.data[:NONCE_BYTES])
    with pytest.raises(CodecError, match="truncated"):
        await codec.decode([truncated])

    no_key_id = Payload(metadata={"encoding": ENCODING}, data=sealed.data)
    with pytest.raises(CodecError, match=KEY_ID_METADATA):
        await codec.decode([no_key_id])


async def test_after_rotation_old_payloads_still_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first, created = ensure_keyring(path)
    assert created and mode(path) == 0o600
    before = EncryptionCodec.from_file(path)
    [old] = await before.encode([plain("under the first key")])

    rotated = rotate_keyring(path)
    assert rotated.active != first.active
    assert set(rotated.keys) == {first.active, rotated.active}
    assert rotated.keys[first.active] == first.keys[first.active]
    assert mode(path) == 0o600

    after = EncryptionCodec.from_file(path)
    [new] = await after.encode([plain("under the second key")])
    assert new.metadata[KEY_ID_METADATA] == rotated.active.encode()
    assert await after.decode([old]) == [plain("under the first key")]
    # A process that loaded the keyring before the rotation re-reads it when it meets
    # the new key id, so rotation needs no simultaneous restart to keep decrypting.
    assert await before.decode([new]) == [plain("under the second key")]

    rotate_keyring(path)
    assert len(load_keyring(path).keys) == 3
    assert await EncryptionCodec.from_file(path).decode([old]) == [plain("under the first key")]


def test_ensure_keyring_keeps_an_existing_keyring(tmp_path: Path) -> None:
    path = tmp_path / "state" / "payload-keys.json"
    first, created = ensure_keyring(path)
    again, created_again = ensure_keyring(path)
    assert created and not created_again
    assert again == first
    assert [p.name for p in path.parent.iterdir()] == ["payload-keys.json"]  # no temp left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ("[]", '"active"'),
        ('{"keys": {}}', "'active' must name a key id"),
        ('{"active": "a", "keys": {"a": {"key": "AAAA"}}}', "must be 32 bytes"),
        ('{"active": "a", "keys": {"a": {"key": "%%%"}}}', "not valid base64"),
        ('{"active": "a", "keys": {"a": "x"}}', "has no base64 'key'"),
        ('{"active": "b", "keys": {}}', "active key id 'b' is not among the keys"),
        ('{"version": 9, "active": "a", "keys": {}}', "unsupported keyring version"),
    ],
)
def test_a_bad_keyring_file_is_refused_with_its_path(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyringError) as caught:
        load_keyring(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_missing_keyring_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match=r"python -m workers.codec init"):
        load_keyring(tmp_path / "missing.json")


def test_a_client_never_creates_a_keyring_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI run outside the cluster's folder created a keyring in that folder's
    `.state`, and the journey it started failed every workflow task on the worker."""
    monkeypatch.delenv("PAYLOAD_KEYS_FILE", raising=False)  # set by the Temporal fixtures
    local = load_settings(MINEACTION_STATE_DIR=str(tmp_path))
    with pytest.raises(KeyringError, match="MINEACTION_STATE_DIR or PAYLOAD_KEYS_FILE"):
        data_converter(local)
    assert not (tmp_path / "payload-keys.json").exists()
    keyring, _ = ensure_keyring(tmp_path / "payload-keys.json")  # as `make run` does
    assert data_converter(local).payload_codec.keyring == keyring  # type: ignore[union-attr]
    named = load_settings(PAYLOAD_KEYS_FILE=str(tmp_path / "provisioned.json"))
    with pytest.raises(KeyringError, match=r"provisioned\.json"):
        data_converter(named)


async def test_the_worker_does_not_connect_without_its_keyring(tmp_path: Path) -> None:
    settings = load_settings(
        PAYLOAD_KEYS_FILE=str(tmp_path / "absent.json"), TEMPORAL_ADDRESS="127.0.0.1:1"
    )
    with pytest.raises(ConfigError, match="no payload keyring"):
        await connect(settings, attempts=1)


def codec_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.codec", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_rotate_command(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    init = codec_cli("init", "--file", str(path))
    assert init.returncode == 0, init.stderr
    first = load_keyring(path)
    assert first.active in init.stdout

    rotate = codec_cli("rotate", "--file", str(path))
    assert rotate.returncode == 0, rotate.stderr
    second = load_keyring(path)
    assert second.active != first.active and first.active in second.keys
    assert f"new payloads use {second.active}" in rotate.stdout
    assert mode(path) == 0o600

    show = codec_cli("show", "--file", str(path))
    assert show.returncode == 0
    assert first.active in show.stdout and second.active in show.stdout
    for key in second.keys.values():  # key material is never printed
        assert base64.b64encode(key).decode() not in show.stdout + rotate.stdout


def test_the_command_reports_a_bad_keyring_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    missing = codec_cli("rotate", "--file", str(path))
    assert missing.returncode == 2
    assert missing.stderr.startswith("codec: no payload keyring at")
    assert "Traceback" not in missing.stderr and not path.exists()
    path.write_text("{broken")
    broken = codec_cli("show", "--file", str(path))
    assert broken.returncode == 2 and "not JSON" in broken.stderr
    assert "Traceback" not in broken.stderr
    usage = codec_cli("destroy")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
