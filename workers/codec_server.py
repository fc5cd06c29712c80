"""The codec server: lets the Temporal Web UI (and `temporal --codec-endpoint`) show
decrypted payloads to an operator who runs it, with the cluster's keyring.

    python -m workers.codec_server     # listens on CODEC_SERVER_ADDRESS (127.0.0.1:8234)

It speaks Temporal's remote codec protocol: ``POST /decode`` and ``POST /encode`` take
``{"payloads": [...]}`` (proto3 JSON of temporal.api.common.v1.Payload, bytes in base64)
and answer the same shape. Besides that:

- ``X-Namespace``: when present it must be the cluster's namespace (TEMPORAL_NAMESPACE);
  the keyring belongs to that namespace only.
- CORS: browsers may call it only from the Web UI's origins, by default
  ``http://localhost:<TEMPORAL_UI_PORT>`` and ``http://127.0.0.1:<TEMPORAL_UI_PORT>``;
  ``CODEC_SERVER_CORS_ORIGINS`` (comma-separated) replaces them. A request from any
  other browser origin is refused (403). Requests without an Origin (curl, the CLI) pass.
- ``CODEC_SERVER_TOKEN``, when set, must come as ``Authorization: Bearer <token>``.
- Bad input (not JSON, the wrong shape, a key it does not hold) gets 400 and a message
  in ``{"error": ...}``; never a traceback. Payload bytes are never logged.

Anyone who can reach it can decrypt, so it listens on loopback by default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from services.common.config import ConfigError, Settings, load_settings
from services.common.logging import configure_logging
from workers.codec import CodecError, EncryptionCodec, KeyringError

log = structlog.get_logger("mineaction.codec_server")

MAX_BODY_BYTES = 8 * 1024 * 1024
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class CodecServerConfig:
    namespace: str
    origins: frozenset[str]
    token: str | None = None


def config_from(settings: Settings) -> CodecServerConfig:
    """The server's options: the namespace it serves, the browser origins it answers
    (by default the local Web UI's) and the bearer token it may require."""
    raw = settings.codec_server_cors_origins
    if raw is None:
        port = settings.temporal_ui_port
        origins = frozenset({f"http://localhost:{port}", f"http://127.0.0.1:{port}"})
    else:
        origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    return CodecServerConfig(settings.temporal_namespace, origins, settings.codec_server_token)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def _is_base64(value: object) -> bool:
    if not isinstance(value, str):
        return False
    padded = value + "=" * (-len(value) % 4)
    try:
        base64.b64decode(padded, validate=True)
        return True
    except binascii.Error:
        try:
            base64.b64decode(padded, altchars=b"-_", validate=True)
            return True
        except binascii.Error:
            return False


def _payloads_problem(payloads: list[object]) -> str | None:
    """What is wrong with a JSON list of payloads, or None. Protobuf's own JSON parser
    lets bad base64 through as empty bytes, so the bytes are checked here first."""
    for i, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            return f"payloads[{i}]: expected an object with metadata and data"
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            return f"payloads[{i}].metadata: expected an object of base64 strings"
        for key, value in metadata.items():
            if not _is_base64(value):
                return f"payloads[{i}].metadata[{key!r}]: not base64"
        if "data" in payload and not _is_base64(payload["data"]):
            return f"payloads[{i}].data: not base64"
    return None


def build_app(codec: EncryptionCodec, config: CodecServerConfig) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in config.origins:
            return _error(403, f"origin {origin} is not allowed to use this codec server")
        if request.method == "OPTIONS":  # CORS preflight: no credentials are sent with it
            response: web.StreamResponse = web.Response(status=204)
        elif (
            config.token is not None
            and request.path != "/health"  # a liveness probe carries no token, reveals nothing
            and not hmac.compare_digest(  # bytes: a header of any characters is just wrong
                request.headers.get("Authorization", "").encode("utf-8", "surrogateescape"),
                f"Bearer {config.token}".encode(),
            )
        ):
            response = _error(401, "a valid 'Authorization: Bearer <token>' is required")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                response = _error(error.status, error.reason)
        if origin is not None:
            response.headers.update(_cors_headers(origin))
        return response

    async def preflight(_: web.Request) -> web.StreamResponse:
        return web.Response(status=204)  # answered by the middleware

    def endpoint(
        transform: Callable[[Sequence[object]], Awaitable[Sequence[object]]], what: str
    ) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            namespace = request.headers.get("X-Namespace")
            if namespace is not None and namespace != config.namespace:
                return _error(
                    400,
                    f"this codec server holds the keys of namespace {config.namespace!r}, "
                    f"not {namespace!r}",
                )
            body = await request.read()
            try:
                document = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                return _error(400, f"the body is not JSON: {error}")
            # Proto3 JSON leaves an empty list out: `{}` is zero payloads (the Temporal
            # CLI sends it for a query without arguments).
            if not isinstance(document, dict) or not isinstance(
                document.setdefault("payloads", []), list
            ):
                return _error(400, 'expected a JSON object {"payloads": [...]}')
            problem = _payloads_problem(document["payloads"])
            if problem is not None:
                return _error(400, problem)
            try:
                payloads = json_format.ParseDict(document, Payloads())
            except (json_format.ParseError, ValueError, TypeError) as error:
                return _error(400, f"not a list of Temporal payloads: {error}")
            try:
                result = await transform(list(payloads.payloads))
            except CodecError as error:
                log.info("codec request refused", operation=what, error=str(error))
                return _error(400, f"cannot {what}: {error}")
            out = Payloads(payloads=result)  # type: ignore[arg-type]
            log.debug("codec request", operation=what, payloads=len(result))
            return web.json_response({"payloads": [], **json_format.MessageToDict(out)})

        return handle

    async def health(_: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "namespace": config.namespace})

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/decode", endpoint(codec.decode, "decode"))  # type: ignore[arg-type]
    app.router.add_post("/encode", endpoint(codec.encode, "encode"))  # type: ignore[arg-type]
    app.router.add_route("OPTIONS", "/decode", preflight)
    app.router.add_route("OPTIONS", "/encode", preflight)
    app.router.add_get("/health", health)
    return app


async def start(app: web.Application, address: str) -> tuple[web.AppRunner, int]:
    """Serve `app` on HOST:PORT (port 0 picks a free one); returns the runner and port."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    return runner, int(runner.addresses[0][1])


async def serve(settings: Settings, config: CodecServerConfig) -> None:
    codec = EncryptionCodec.from_file(settings.effective_payload_keys_file)
    runner, port = await start(build_app(codec, config), settings.codec_server_address)
    host = settings.codec_server_address.rpartition(":")[0]
    log.info(
        "codec server started",
        address=f"http://{host}:{port}",
        keyring=str(settings.effective_payload_keys_file),
        origins=sorted(config.origins),
        token_required=config.token is not None,
    )
    print(f"codec server listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    log.info("codec server stopped")


def main() -> None:
    try:
        settings = load_settings()
        config = config_from(settings)
    except ConfigError as error:
        print(f"codec server: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, process="codec-server")
    try:
        asyncio.run(serve(settings, config))
    except KeyringError as error:
        print(f"codec server: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:
        print(
            f"codec server: cannot listen on {settings.codec_server_address}: {error}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
