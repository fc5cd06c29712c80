"""Configuration is parsed once, and a bad value stops start-up with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.channels import service_token
from services.common.config import ConfigError, load_settings


def test_defaults_are_the_documented_addresses() -> None:
    settings = load_settings()
    assert settings.eligibility_address == "127.0.0.1:50051"
    assert settings.lending_address == "127.0.0.1:50052"
    assert settings.assistance_address == "127.0.0.1:50053"
    assert settings.effective_temporal_address == "127.0.0.1:7233"
    assert settings.temporal_ui_port == 8233


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("LENDING_ADDRESS", "localhost", "expected HOST:PORT"),
        ("ELIGIBILITY_ADDRESS", "127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("DATABASE_URL", "mysql://x", "must start with postgresql://"),
        ("DB_POOL_MAX_SIZE", "zero", "valid integer"),
        ("LOG_LEVEL", "loud", "debug"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{variable: value})
    message = str(caught.value)
    assert variable in message
    assert complaint in message


@pytest.mark.parametrize("module", ["services.lending", "workers", "cluster"])
def test_process_refuses_bad_configuration(module: str) -> None:
    """Every entry point stops with exit code 2 and one clear line per bad variable."""
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={"LENDING_ADDRESS": "nonsense", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "LENDING_ADDRESS: expected HOST:PORT, got 'nonsense'\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_auth_files_default_to_the_state_folder(tmp_path: Path) -> None:
    settings = load_settings(MINEACTION_STATE_DIR=str(tmp_path))
    assert settings.effective_jwks_file == tmp_path / "jwks.json"
    assert settings.effective_service_token_file == tmp_path / "service-token"
    assert settings.effective_signing_key_file == tmp_path / "signing-key.json"
    chosen = load_settings(AUTH_JWKS_FILE="/etc/keys/jwks.json", SERVICE_TOKEN_FILE="/run/t")
    assert chosen.effective_jwks_file == Path("/etc/keys/jwks.json")
    assert chosen.effective_service_token_file == Path("/run/t")


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"TLS_CERT_FILE": "/x.crt"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        ({"TLS_CLIENT_KEY_FILE": "/x.key"}, "TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE"),
        ({"TLS_CLIENT_CA_FILE": "/ca.pem"}, "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE"),
        ({"AUTH_LEEWAY_SECONDS": "-1"}, "AUTH_LEEWAY_SECONDS"),
        ({"AUTH_AUDIENCE": ""}, "AUTH_AUDIENCE"),
    ],
)
def test_bad_security_settings_stop_start_up(variables: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(**variables)


def test_the_service_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "service-token"
    path.write_text("first\n")
    token = service_token(load_settings(SERVICE_TOKEN_FILE=str(path)))
    assert callable(token) and token() == "first"
    path.write_text("second, minted anew\n")
    assert token() == "second, minted anew"
    path.write_text("")  # being rewritten: the last token goes on
    assert token() == "second, minted anew"
    path.unlink()
    assert token() == "second, minted anew"
    path.write_text("third")
    assert token() == "third"
    assert service_token(load_settings(SERVICE_TOKEN="inline")) == "inline"
