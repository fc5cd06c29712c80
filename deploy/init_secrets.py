"""Write the keys and tokens a deployment mounts as secrets, into one folder.

    .venv/bin/python deploy/init_secrets.py deploy/secrets            # compose's folder
    .venv/bin/python deploy/init_secrets.py /secure/place --service-token-days 90

Run it from the repository root, with the project's virtualenv. Files already there are
kept (run it again to re-mint the tokens with the same signing key):

| File | What | Mode |
|---|---|---|
| `signing-key.json` | Ed25519 private key that signs tokens. Stays off the cluster | 0600 |
| `jwks.json` | its public half: what the services verify with (AUTH_JWKS_FILE) | 0644 |
| `service-token` | the token of the worker and eligibility, role `service` | 0600 |
| `operator-token` | a token with every role, for the CLI and grpcurl during a trial | 0600 |
| `payload-keys.json` | the AES-256 payload keyring (PAYLOAD_KEYS_FILE) | 0600 |

In production, staff tokens come from the agency's identity provider and the JWKS from it
(docs/security.md); this script is for one host and for bootstrapping a cluster's
Secrets (docs/operations.md). It prints file names and key ids, never key material.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from services.common.auth import (
    RELAY_ROLE,
    ROLES,
    SERVICE_SUBJECT,
    SigningKey,
    load_signing_key,
    mint_token,
    publish_key,
    read_jwks,
    save_signing_key,
    write_private,
)
from workers.codec import ensure_keyring

SIGNING_KEY = "signing-key.json"
JWKS = "jwks.json"
SERVICE_TOKEN = "service-token"
OPERATOR_TOKEN = "operator-token"
PAYLOAD_KEYS = "payload-keys.json"
# The private files a container reads: the container user (uid 10001) must own them.
MOUNTED_PRIVATE = (SERVICE_TOKEN, PAYLOAD_KEYS)


def init_secrets(
    folder: Path,
    *,
    issuer: str = "mineaction",
    audience: str = "mineaction-api",
    service_token_days: int = 90,
    operator_token_hours: int = 12,
) -> list[str]:
    """Create what is missing in `folder` and mint fresh tokens; returns report lines."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    key_file = folder / SIGNING_KEY
    if key_file.exists():
        key = load_signing_key(key_file)
        lines.append(f"kept     {key_file} (kid {key.kid})")
    else:
        key = SigningKey.generate()
        save_signing_key(key_file, key)
        lines.append(f"created  {key_file} (kid {key.kid})")
    jwks_file = folder / JWKS
    if not jwks_file.exists() or key.kid not in {
        k.get("kid") for k in read_jwks(jwks_file)["keys"]
    }:
        publish_key(jwks_file, key)
        jwks_file.chmod(0o644)  # public keys only
        lines.append(f"wrote    {jwks_file} (kid {key.kid} added)")
    else:
        lines.append(f"kept     {jwks_file}")
    for name, subject, roles, ttl, valid in (
        (
            SERVICE_TOKEN,
            SERVICE_SUBJECT,
            (RELAY_ROLE,),
            timedelta(days=service_token_days),
            f"{service_token_days} days",
        ),
        (
            OPERATOR_TOKEN,
            "operator",
            ROLES,
            timedelta(hours=operator_token_hours),
            f"{operator_token_hours} hours",
        ),
    ):
        token = mint_token(
            key, subject=subject, roles=roles, issuer=issuer, audience=audience, ttl=ttl
        )
        write_private(folder / name, token + "\n")
        lines.append(f"minted   {folder / name} (subject {subject}, valid {valid})")
    keyring, created = ensure_keyring(folder / PAYLOAD_KEYS)
    verb = "created " if created else "kept    "
    lines.append(f"{verb} {folder / PAYLOAD_KEYS} (active key {keyring.active})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write (e.g. deploy/secrets)")
    parser.add_argument("--issuer", default="mineaction", help="AUTH_ISSUER of the services")
    parser.add_argument("--audience", default="mineaction-api", help="AUTH_AUDIENCE")
    parser.add_argument("--service-token-days", type=int, default=90)
    parser.add_argument("--operator-token-hours", type=int, default=12)
    args = parser.parse_args(argv)
    if args.service_token_days < 1 or args.operator_token_hours < 1:
        parser.error("token lifetimes must be at least 1")
    try:
        lines = init_secrets(
            args.folder,
            issuer=args.issuer,
            audience=args.audience,
            service_token_days=args.service_token_days,
            operator_token_hours=args.operator_token_hours,
        )
    except (OSError, ValueError) as error:
        print(f"init_secrets: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    mounted = " ".join(str(args.folder / name) for name in MOUNTED_PRIVATE)
    print(f"containers run as uid 10001; for docker compose:  sudo chown 10001:10001 {mounted}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
