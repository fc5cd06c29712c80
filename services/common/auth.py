"""Who is calling, and what they may call.

- Keys: Ed25519 signing keys with a key id (`kid`). Services hold only the public keys,
  as a JWKS file; during a rotation it lists the old key and the new one, so tokens
  signed under either verify.
- Tokens: JWTs (EdDSA) with `sub` (the acting identity), `roles`, `iss`, `aud`, `iat`
  and `exp`. `mint_token` is the one place tokens are made (local cluster, CLI, tests).
- The access policy: role x RPC, one YAML file next to this module
  (`access_policy.yaml`), default deny. See docs/security.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from services.common.channels import DEV_TOKEN_FILE
from services.common.config import Settings
from services.common.errors import Unauthenticated
from services.common.logging import get_logger

ROLES = (
    "case_worker",
    "loan_officer",
    "committee_member",
    "programme_manager",
    "auditor",
    "service",
)
STAFF_ROLES = tuple(r for r in ROLES if r != "service")
# The role that relays decisions people made elsewhere (the journey worker): it may name
# the acting staff member in a request's actor field instead of acting as itself.
RELAY_ROLE = "service"
ALGORITHM = "EdDSA"
POLICY_FILE = Path(__file__).with_name("access_policy.yaml")
DEV_SUBJECT = "dev"
SERVICE_SUBJECT = "journey-worker"


class AuthConfigError(Exception):
    """Keys, JWKS or the access policy cannot be used; the process must not start."""


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    subject: str
    roles: frozenset[str]

    @property
    def relays(self) -> bool:
        return RELAY_ROLE in self.roles


@dataclass(frozen=True)
class _Verified:
    """A token whose signature and claims verified: what is re-checked at each use."""

    principal: Principal
    kid: str
    expires_at: float
    not_before: float


# --- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        kid = kid or f"{datetime.now(UTC):%Y%m%d}-{uuid.uuid4().hex[:8]}"
        return cls(kid, Ed25519PrivateKey.generate())

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(OKPAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True))
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        jwk = dict(OKPAlgorithm.to_jwk(self.private_key, as_dict=True))
        return {**jwk, "kid": self.kid, "alg": ALGORITHM}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> SigningKey:
        key = OKPAlgorithm.from_jwk(dict(jwk))
        if not isinstance(key, Ed25519PrivateKey) or not jwk.get("kid"):
            raise AuthConfigError("the signing key must be an Ed25519 private JWK with a kid")
        return cls(str(jwk["kid"]), key)


def write_private(path: Path, text: str) -> None:
    """Secrets are created readable by their owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def save_signing_key(path: Path, key: SigningKey) -> None:
    write_private(path, json.dumps(key.private_jwk(), indent=2) + "\n")


def load_signing_key(path: Path) -> SigningKey:
    try:
        return SigningKey.from_jwk(json.loads(path.read_text()))
    except (OSError, ValueError, jwt.exceptions.InvalidKeyError) as error:
        raise AuthConfigError(f"cannot read the signing key {path}: {error}") from None


def publish_key(jwks_file: Path, key: SigningKey) -> None:
    """Add the key's public half to the JWKS file, keeping the keys already there: old
    tokens keep verifying until their key is removed by hand."""
    keys = read_jwks(jwks_file)["keys"] if jwks_file.exists() else []
    keys = [k for k in keys if k.get("kid") != key.kid] + [key.public_jwk()]
    jwks_file.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then put in place: a service reading it meanwhile sees the old file
    # or the new one, never half of one (which it would take for a JWKS trusting nothing
    # until its next look). The file keeps what it was: where a link points, its mode
    # (services run as another user must still read it) and, where allowed, its owner.
    target = jwks_file.resolve()
    before = target.stat() if target.exists() else None
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
        partial.chmod(stat.S_IMODE(before.st_mode) if before else 0o644)
        if before is not None:
            with contextlib.suppress(PermissionError):
                os.chown(partial, before.st_uid, before.st_gid)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def read_jwks(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AuthConfigError(
            f"no JWKS file at {path}: set AUTH_JWKS_FILE or AUTH_JWKS (make run creates "
            "one in the state folder)"
        ) from None
    except OSError as error:
        raise AuthConfigError(f"cannot read the JWKS file {path}: {error}") from None
    return parse_jwks(text, str(path))


def parse_jwks(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise AuthConfigError(f"{where} is not JSON: {error}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if (
        not isinstance(keys, list)
        or not keys
        or not all(isinstance(k, dict) and k.get("kid") for k in keys)  # not ["oops"]
    ):
        raise AuthConfigError(f"{where} must be a JWKS: {{'keys': [...]}}, each with a kid")
    return {"keys": keys}


# --- tokens ----------------------------------------------------------------------------


def mint_token(
    key: SigningKey,
    *,
    subject: str,
    roles: Iterable[str],
    issuer: str,
    audience: str,
    ttl: timedelta = timedelta(hours=8),
    now: datetime | None = None,
) -> str:
    """A signed bearer token for `subject` holding `roles`."""
    roles = list(roles)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    issued = now or datetime.now(UTC)
    claims = {
        "sub": subject,
        "roles": roles,
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def mint_with_settings(
    settings: Settings,
    *,
    subject: str,
    roles: Iterable[str],
    ttl: timedelta = timedelta(hours=8),
    now: datetime | None = None,
) -> str:
    """A token signed with the configured signing key, for this cluster's issuer and
    audience (the local cluster, the CLI, the tests)."""
    return mint_token(
        load_signing_key(settings.effective_signing_key_file),
        subject=subject,
        roles=roles,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        ttl=ttl,
        now=now,
    )


class TokenVerifier:
    """Checks signature (by kid, against the JWKS), issuer, audience and expiry."""

    # The JWKS file is looked at (its modification time) at most this often, and re-read
    # when it has changed: a key just published verifies, a key withdrawn stops verifying.
    RELOAD_INTERVAL_SECONDS = 5.0
    # Verified tokens remembered (callers reuse one token for hours; an Ed25519 check and
    # the claim parsing cost more than the rest of a small call). Least recently used go.
    CACHE_SIZE = 1024

    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int = 30,
        inline_jwks: str | None = None,
    ) -> None:
        self._file = jwks_file
        self._inline = inline_jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._stamp = self._file_stamp()
        self._keys = self._load()
        self._checked_at = time.monotonic()
        self._unreadable = ""  # why the JWKS last could not be read, once said
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            settings.effective_jwks_file,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_seconds=settings.auth_leeway_seconds,
            inline_jwks=settings.auth_jwks,
        )

    def _load(self, *, reloading: bool = False) -> dict[str, jwt.PyJWK]:
        """The keys the JWKS holds. At start a key that cannot be used stops the service;
        read again while it runs, such a key (one of another type added during a
        rotation) is left out, said so at error, and the others are trusted."""
        jwks = parse_jwks(self._inline, "AUTH_JWKS") if self._inline else read_jwks(self._file)
        keys = {}
        for jwk in jwks["keys"]:
            try:
                keys[str(jwk["kid"])] = jwt.PyJWK(jwk, algorithm=ALGORITHM)
            except jwt.exceptions.PyJWTError as error:
                problem = f"{self._file}: key {jwk['kid']}: {error}"
                if not reloading:
                    raise AuthConfigError(problem) from None
                get_logger(__name__).error("a JWKS key cannot be used", error=problem)
        if not keys:
            raise AuthConfigError(f"{self._file} holds no key that can be used")
        return keys

    def _file_stamp(self) -> int | None:
        """The JWKS file's modification time; None for keys given inline or no file."""
        if self._inline:
            return None
        try:
            return self._file.stat().st_mtime_ns
        except OSError:
            return None

    def _refresh(self) -> None:
        """Re-read the JWKS when its file has changed, looking at most every
        RELOAD_INTERVAL_SECONDS: a key withdrawn must stop verifying without a restart
        (a compromised key is withdrawn this way), tokens already seen included."""
        now = time.monotonic()
        if now - self._checked_at <= self.RELOAD_INTERVAL_SECONDS:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self._keys = self._load(reloading=True)
            self._stamp, self._unreadable = stamp, ""
        except AuthConfigError as error:
            # Trust no key until it reads again, tried at every look (a file made readable
            # by chmod, or finished after a half-written read, may keep its stamp): keeping
            # the keys read before kept trusting a key withdrawn by emptying the file, or
            # by a typo in it, with no word to anyone. Said once, not at every look.
            self._keys = {}
            if str(error) != self._unreadable:
                self._unreadable = str(error)
                get_logger(__name__).error(
                    "the JWKS cannot be read: every token is refused until it can",
                    error=str(error),
                )

    def _key(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)

    def verify(self, token: str) -> Principal:
        """The token's principal, or Unauthenticated saying what is wrong.

        A token seen before is not verified again, but its expiry (and not-before) is
        checked at every use, and it stops being accepted as soon as its key leaves the
        JWKS; anything else goes through the full check, which says what is wrong."""
        self._refresh()
        cached = self._verified.get(token)
        if cached is not None:
            now = time.time()
            if (
                cached.not_before - self._leeway <= now < cached.expires_at + self._leeway
                and cached.kid in self._keys
            ):
                self._verified.move_to_end(token)
                return cached.principal
            del self._verified[token]
        principal, verified = self._verify(token)
        self._verified[token] = verified
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, _Verified]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.PyJWTError:  # not a JWT, or a header PyJWT refuses (crit, kid)
            raise Unauthenticated(
                "the bearer token is not a JWT", reason="TOKEN_MALFORMED"
            ) from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(
                f"tokens must be signed with {ALGORITHM}", reason="TOKEN_ALGORITHM"
            )
        kid = str(header.get("kid") or "")
        key = self._key(kid)
        if key is None:
            raise Unauthenticated(
                f"the token's signing key {kid!r} is not trusted", reason="TOKEN_UNKNOWN_KEY"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.exceptions.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.exceptions.InvalidAudienceError:
            raise Unauthenticated(
                f"the token is not meant for this API (audience must be {self._audience!r})",
                reason="TOKEN_AUDIENCE",
            ) from None
        except jwt.exceptions.InvalidIssuerError:
            raise Unauthenticated(
                f"the token was not issued by {self._issuer!r}", reason="TOKEN_ISSUER"
            ) from None
        except jwt.exceptions.InvalidSignatureError:
            raise Unauthenticated(
                "the token's signature does not verify", reason="TOKEN_SIGNATURE"
            ) from None
        except jwt.exceptions.PyJWTError as error:
            raise Unauthenticated(f"invalid token: {error}", reason="TOKEN_INVALID") from None
        roles = claims.get("roles")
        subject = claims.get("sub")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("the token has no roles claim", reason="TOKEN_NO_ROLES")
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthenticated("the token has no subject", reason="TOKEN_NO_SUBJECT")
        principal = Principal(subject, frozenset(r for r in roles if r in ROLES))
        # exp is required and numeric (jwt.decode checked it); nbf is optional.
        not_before = claims.get("nbf")
        return principal, _Verified(
            principal,
            kid,
            float(claims["exp"]),
            float(not_before) if isinstance(not_before, int | float) else float("-inf"),
        )


# --- the access policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    # The request field naming who acts (dotted for nested fields), bound to the caller.
    actor_field: str | None


class AccessPolicy:
    """Role x RPC from access_policy.yaml. A method it does not list is refused."""

    def __init__(self, open_services: Iterable[str], rules: Mapping[str, Rule]) -> None:
        self.open_services = frozenset(open_services)
        self.rules = dict(rules)

    @classmethod
    def load(cls, path: Path = POLICY_FILE) -> AccessPolicy:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise AuthConfigError(f"cannot read the access policy {path}: {error}") from None
        rules: dict[str, Rule] = {}
        for service, methods in (data.get("services") or {}).items():
            for method, entry in methods.items():
                roles = entry.get("roles") or []
                unknown = set(roles) - set(ROLES)
                if unknown:
                    raise AuthConfigError(f"{path}: {service}.{method}: unknown role(s) {unknown}")
                rules[f"/{service}/{method}"] = Rule(frozenset(roles), entry.get("actor"))
        return cls(data.get("open_services") or [], rules)

    def is_open(self, method: str) -> bool:
        """Health and reflection: open for probes and grpcurl."""
        return method.lstrip("/").partition("/")[0] in self.open_services

    def rule(self, method: str) -> Rule | None:
        return self.rules.get(method)


# --- the local cluster's credentials --------------------------------------------------------


def ensure_dev_credentials(settings: Settings, *, ttl: timedelta = timedelta(days=30)) -> None:
    """For `make run` and the tests: a signing key and JWKS on first start, and fresh
    tokens every start: `dev-token` (every role, subject `dev`) and the worker's
    `service-token` (role `service`)."""
    key_file = settings.effective_signing_key_file
    if key_file.exists():
        key = load_signing_key(key_file)
    else:
        key = SigningKey.generate()
        save_signing_key(key_file, key)
    if not settings.effective_jwks_file.exists() or key.kid not in {
        k.get("kid") for k in read_jwks(settings.effective_jwks_file)["keys"]
    }:
        publish_key(settings.effective_jwks_file, key)
    for path, subject, roles in (
        (settings.state_dir / DEV_TOKEN_FILE, DEV_SUBJECT, ROLES),
        (settings.effective_service_token_file, SERVICE_SUBJECT, (RELAY_ROLE,)),
    ):
        token = mint_token(
            key,
            subject=subject,
            roles=roles,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            ttl=ttl,
        )
        write_private(path, token + "\n")
