"""The codec server over real HTTP: Temporal's remote codec protocol, the namespace
header, CORS for the Web UI, the optional bearer token, and 400s (never 500s) for bad
input; then the `python -m workers.codec_server` process itself, and the dev server's
Web UI pointed at it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from temporalio.api.common.v1 import Payload

from cluster.run import dev_server_argv
from services.common.config import ConfigError, load_settings
from tests.ports import free_port
from workers.codec import (
    ENCODING,
    EncryptionCodec,
    Keyring,
    data_converter_for,
    ensure_keyring,
    rotate_keyring,
)
from workers.codec_server import CodecServerConfig, build_app, config_from, start

UI = "http://localhost:8233"
NAME = "Günay Əliyeva"


@dataclass(frozen=True)
class Contact:
    name: str
    phone: str


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def payload_json(p: Payload) -> dict[str, Any]:
    return {"metadata": {k: b64(v) for k, v in p.metadata.items()}, "data": b64(p.data)}


def payload_of(j: dict[str, Any]) -> Payload:
    return Payload(
        metadata={k: base64.b64decode(v) for k, v in j.get("metadata", {}).items()},
        data=base64.b64decode(j.get("data", "")),
    )


@dataclass
class Server:
    url: str
    codec: EncryptionCodec
    http: aiohttp.ClientSession
    keys: Path

    async def post(
        self, path: str, body: object, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        async with self.http.post(self.url + path, data=data, headers=headers or {}) as r:
            text = await r.text()
            return r.status, json.loads(text), r.headers


async def serve(keys: Path, token: str | None = None) -> AsyncIterator[Server]:
    codec = EncryptionCodec.from_file(keys)
    config = CodecServerConfig("default", frozenset({UI, "http://127.0.0.1:8233"}), token)
    runner, port = await start(build_app(codec, config), "127.0.0.1:0")
    async with aiohttp.ClientSession() as http:
        yield Server(f"http://127.0.0.1:{port}", codec, http, keys)
    await runner.cleanup()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "payload-keys.json"
    ensure_keyring(path)
    return path


@pytest_asyncio.fixture
async def server(keys: Path) -> AsyncIterator[Server]:
    async for s in serve(keys):
        yield s


async def test_decodes_what_a_worker_encrypted(server: Server) -> None:
    converter = data_converter_for(EncryptionCodec.from_file(server.keys))
    [sealed] = await converter.encode([Contact(NAME, "+994 55 765 43 21")])
    status, body, _ = await server.post(
        "/decode", {"payloads": [payload_json(sealed)]}, {"X-Namespace": "default"}
    )
    assert status == 200, body
    [opened] = body["payloads"]
    assert base64.b64decode(opened["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(opened["data"])) == {
        "name": NAME,
        "phone": "+994 55 765 43 21",
    }


async def test_encode_then_decode_round_trips_and_passes_clear_payloads(server: Server) -> None:
    clear = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(NAME).encode())
    status, body, _ = await server.post("/encode", {"payloads": [payload_json(clear)]})
    assert status == 200, body
    sealed = payload_of(body["payloads"][0])
    assert sealed.metadata["encoding"] == ENCODING and NAME.encode() not in sealed.data

    status, body, _ = await server.post("/decode", {"payloads": [payload_json(sealed)] * 2})
    assert status == 200 and [payload_of(p) for p in body["payloads"]] == [clear, clear]
    # A payload written before encryption comes back as it was.
    status, body, _ = await server.post("/decode", {"payloads": [payload_json(clear)]})
    assert status == 200 and payload_of(body["payloads"][0]) == clear
    status, body, _ = await server.post("/decode", {"payloads": []})
    assert status == 200 and body == {"payloads": []}
    # Proto3 JSON leaves an empty list out; the Temporal CLI sends `{}` for a bare query.
    status, body, _ = await server.post("/decode", {})
    assert status == 200 and body == {"payloads": []}


async def test_keys_rotated_while_it_runs_are_picked_up(server: Server, keys: Path) -> None:
    rotate_keyring(keys)
    newer = EncryptionCodec.from_file(keys)
    [sealed] = await newer.encode([Payload(metadata={"encoding": b"binary/plain"}, data=b"x")])
    status, body, _ = await server.post("/decode", {"payloads": [payload_json(sealed)]})
    assert status == 200, body
    assert payload_of(body["payloads"][0]).data == b"x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json at all", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        ("[1, 2]", 'expected a JSON object {"payloads": [...]}'),
        ({"payload": []}, "not a list of Temporal payloads"),
        ({"payloads": "abc"}, 'expected a JSON object {"payloads": [...]}'),
        ({"payloads": [42]}, "payloads[0]: expected an object"),
        ({"payloads": [{"data": "!!not base64!!"}]}, "payloads[0].data: not base64"),
        ({"payloads": [{"metadata": ["encoding"]}]}, "payloads[0].metadata: expected an object"),
        ({"payloads": [{"metadata": {"encoding": 7}}]}, "payloads[0].metadata['encoding']"),
        ({"payloads": [{"data": "AAAA", "colour": "red"}]}, "not a list of Temporal payloads"),
    ],
)
async def test_bad_input_is_400_with_a_message(server: Server, body: object, message: str) -> None:
    for path in ("/decode", "/encode"):
        status, answer, _ = await server.post(path, body)
        assert status == 400, answer
        assert message in answer["error"]


async def test_payloads_it_cannot_decrypt_are_400(server: Server) -> None:
    stranger = EncryptionCodec(Keyring.generate())
    [foreign] = await stranger.encode([Payload(data=b"secret")])
    status, body, _ = await server.post("/decode", {"payloads": [payload_json(foreign)]})
    assert status == 400
    assert stranger.keyring.active in body["error"] and "not in the keyring" in body["error"]

    [mine] = await server.codec.encode([Payload(data=b"secret")])
    tampered = payload_json(mine)
    tampered["data"] = b64(mine.data[:-1] + bytes([mine.data[-1] ^ 1]))
    status, body, _ = await server.post("/decode", {"payloads": [tampered]})
    assert status == 400 and "failed authentication" in body["error"]


async def test_another_namespace_is_refused(server: Server) -> None:
    [sealed] = await server.codec.encode([Payload(data=b"x")])
    status, body, _ = await server.post(
        "/decode", {"payloads": [payload_json(sealed)]}, {"X-Namespace": "partners"}
    )
    assert status == 400
    assert "namespace 'default', not 'partners'" in body["error"]


async def test_cors_lets_the_web_ui_in_and_no_other_site(server: Server) -> None:
    preflight = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with server.http.options(server.url + "/decode", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == UI
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "X-Namespace" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Allow-Credentials"] == "true"

    [sealed] = await server.codec.encode([Payload(data=b"x")])
    status, _, headers = await server.post(
        "/decode", {"payloads": [payload_json(sealed)]}, {"Origin": "http://127.0.0.1:8233"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8233"

    evil = {**preflight, "Origin": "https://evil.example"}
    async with server.http.options(server.url + "/decode", headers=evil) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    status, body, headers = await server.post(
        "/decode", {"payloads": [payload_json(sealed)]}, {"Origin": "https://evil.example"}
    )
    assert status == 403 and "not allowed" in body["error"]
    assert "payloads" not in body and "Access-Control-Allow-Origin" not in headers


async def test_unknown_paths_and_methods_are_json_errors(server: Server) -> None:
    async with server.http.get(server.url + "/decode") as r:
        assert r.status == 405 and "error" in await r.json()
    async with server.http.post(server.url + "/elsewhere", data="{}") as r:
        assert r.status == 404 and "error" in await r.json()
    too_big = json.dumps({"payloads": [{"data": b64(b"x" * 9_000_000)}]})
    status, body, _ = await server.post("/decode", too_big)
    assert status == 413 and "error" in body


async def test_a_configured_token_is_required(keys: Path) -> None:
    async for server in serve(keys, token="s3cret-token"):
        [sealed] = await server.codec.encode([Payload(data=b"x")])
        request = {"payloads": [payload_json(sealed)]}
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret-token"},
            {"Authorization": "Bearer s3cret-tökén"},  # not ASCII: it failed 500
        ):
            status, body, _ = await server.post("/decode", request, headers)
            assert status == 401 and "Bearer" in body["error"], headers
        status, body, _ = await server.post(
            "/decode", request, {"Authorization": "Bearer s3cret-token"}
        )
        assert status == 200 and payload_of(body["payloads"][0]).data == b"x"
        # The browser's preflight carries no credentials; it must still pass.
        async with server.http.options(
            server.url + "/decode", headers={"Origin": UI, "Access-Control-Request-Method": "POST"}
        ) as r:
            assert r.status == 204
        # A liveness probe (the deployment's health check) needs no token.
        async with server.http.get(server.url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"


def test_cors_origins_come_from_the_environment() -> None:
    settings = load_settings(TEMPORAL_UI_PORT=9233, TEMPORAL_NAMESPACE="agency")
    default = config_from(settings)
    assert default.origins == {"http://localhost:9233", "http://127.0.0.1:9233"}
    assert default.namespace == "agency" and default.token is None
    chosen = config_from(
        load_settings(
            CODEC_SERVER_CORS_ORIGINS="https://temporal.agency.az/, http://ui:8080",
            CODEC_SERVER_TOKEN="t",
        )
    )
    assert chosen.origins == {"https://temporal.agency.az", "http://ui:8080"}
    assert chosen.token == "t"
    with pytest.raises(ConfigError, match="CODEC_SERVER_CORS_ORIGINS"):
        load_settings(CODEC_SERVER_CORS_ORIGINS="temporal.agency.az")


# --- the process ------------------------------------------------------------------------


@pytest.fixture
def codec_process_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PAYLOAD_KEYS_FILE"}
    ensure_keyring(tmp_path / "state" / "payload-keys.json")  # as `make run` does at start
    env.update(
        MINEACTION_STATE_DIR=str(tmp_path / "state"),
        CODEC_SERVER_ADDRESS=f"127.0.0.1:{free_port()}",
        LOG_FORMAT="json",
    )
    return env


@pytest.fixture
def codec_process(codec_process_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.codec_server"],
        env=codec_process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "codec server listening on" in line:
                break
            if not line and proc.poll() is not None:
                raise AssertionError(f"codec server exited: {proc.stderr and proc.stderr.read()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_process_serves_the_state_folder_keyring_and_stops_on_sigterm(
    codec_process: subprocess.Popen[str], codec_process_env: dict[str, str]
) -> None:
    keys = Path(codec_process_env["MINEACTION_STATE_DIR"]) / "payload-keys.json"
    assert keys.exists() and (keys.stat().st_mode & 0o777) == 0o600  # created on first start
    converter = data_converter_for(EncryptionCodec.from_file(keys))
    [sealed] = await converter.encode([Contact(NAME, "+994 70 111 22 33")])
    url = f"http://{codec_process_env['CODEC_SERVER_ADDRESS']}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/decode",
            json={"payloads": [payload_json(sealed)]},
            headers={"X-Namespace": "default", "Origin": UI},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == UI
        opened = payload_of((await r.json())["payloads"][0])
    assert json.loads(opened.data)["name"] == NAME

    codec_process.send_signal(signal.SIGTERM)
    assert codec_process.wait(timeout=15) == 0
    assert codec_process.stderr is not None
    logs = codec_process.stderr.read() + (
        codec_process.stdout.read() if codec_process.stdout else ""
    )
    assert NAME not in logs and "Traceback" not in logs


def test_the_process_refuses_bad_configuration_in_one_line(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "PAYLOAD_KEYS_FILE"}
    for extra, expected in (
        ({"CODEC_SERVER_CORS_ORIGINS": "localhost:8233"}, "CODEC_SERVER_CORS_ORIGINS"),
        ({"PAYLOAD_KEYS_FILE": str(tmp_path / "none.json")}, "no payload keyring at"),
        ({"CODEC_SERVER_ADDRESS": "nowhere"}, "CODEC_SERVER_ADDRESS"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "workers.codec_server"],
            env={**base, "MINEACTION_STATE_DIR": str(tmp_path), **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr


async def test_the_dev_server_web_ui_is_pointed_at_the_codec_server(tmp_path: Path) -> None:
    """The dev server as `make run` starts it: its Web UI asks the codec server for
    payloads, and its SQLite file is in WAL mode (cluster/run.py, one write per commit)."""
    ui_port, codec_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{codec_port}"
    settings = load_settings(
        MINEACTION_STATE_DIR=str(tmp_path),
        TEMPORAL_PORT=free_port(),
        TEMPORAL_UI_PORT=ui_port,
        CODEC_SERVER_ADDRESS=f"127.0.0.1:{codec_port}",
    )
    proc = await asyncio.create_subprocess_exec(
        *dev_server_argv(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ui_settings: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            for _ in range(150):
                try:
                    async with http.get(f"http://127.0.0.1:{ui_port}/api/v1/settings") as r:
                        if r.status == 200:
                            ui_settings = await r.json()
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        assert ui_settings["Codec"]["Endpoint"] == endpoint
        with contextlib.closing(sqlite3.connect(tmp_path / "temporal.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
