"""Mutual TLS: a service host that requires client certificates serves a client that
presents one signed by its CA, and refuses one that presents none or another CA's."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mineaction.lending.v1 import lending_service_pb2 as pb
from mineaction.lending.v1 import lending_service_pb2_grpc as pb_grpc
from services.common.auth import ROLES, mint_with_settings
from services.common.channels import client_tls, open_channel
from services.common.config import Settings, load_settings
from services.common.server import ServiceHost
from services.lending.service import SPEC


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class CA:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(issued.key, key)
        return issued


@dataclass
class TLSHost:
    address: str
    settings: Settings
    ca: CA
    other_ca: CA
    client: Issued
    stranger: Issued


@pytest_asyncio.fixture(scope="module")
async def tls_host(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TLSHost]:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = CA(folder, "agency-ca"), CA(folder, "other-ca")
    server = ca.issue("lending", server=True)
    client, stranger = ca.issue("worker", server=False), other_ca.issue("intruder", server=False)
    served = settings.model_copy(
        update={
            "tls_cert_file": server.cert,
            "tls_key_file": server.key,
            "tls_client_ca_file": ca.path,
        }
    )
    host = ServiceHost(SPEC, served, address="127.0.0.1:0")
    await host.start()
    yield TLSHost(f"127.0.0.1:{host.port}", settings, ca, other_ca, client, stranger)
    await host.stop(grace=1)


def client_settings(host: TLSHost, issued: Issued | None) -> Settings:
    return load_settings(
        TLS_CA_FILE=str(host.ca.path),
        TLS_CLIENT_CERT_FILE=str(issued.cert) if issued else None,
        TLS_CLIENT_KEY_FILE=str(issued.key) if issued else None,
    )


def token(host: TLSHost) -> str:
    return mint_with_settings(host.settings, subject="tls-test", roles=ROLES)


async def list_products(host: TLSHost, tls: grpc.ChannelCredentials | None) -> int:
    async with open_channel(host.address, token(host), tls=tls) as channel:
        response = await pb_grpc.LendingServiceStub(channel).ListLoanProducts(
            pb.ListLoanProductsRequest(), timeout=5
        )
    return len(response.loan_products)


async def test_a_client_with_a_certificate_from_the_ca_is_served(tls_host: TLSHost) -> None:
    assert await list_products(tls_host, client_tls(client_settings(tls_host, tls_host.client)))


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate", "plaintext"])
async def test_other_clients_are_refused(tls_host: TLSHost, who: str) -> None:
    tls = {
        "no certificate": client_tls(client_settings(tls_host, None)),
        "another CA's certificate": client_tls(client_settings(tls_host, tls_host.stranger)),
        "plaintext": None,
    }[who]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_products(tls_host, tls)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_does_not_replace_the_token(tls_host: TLSHost) -> None:
    tls = client_tls(client_settings(tls_host, tls_host.client))
    async with open_channel(tls_host.address, None, tls=tls) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.LendingServiceStub(channel).ListLoanProducts(
                pb.ListLoanProductsRequest(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_half_a_tls_pair_stops_start_up() -> None:
    from services.common.config import ConfigError

    with pytest.raises(ConfigError, match="TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE"):
        load_settings(TLS_CLIENT_CERT_FILE="/tmp/x.crt")
