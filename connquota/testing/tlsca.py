"""The tests' certificate authority: wss:// servers on loopback with a trusted CA, and the
test control plane's PKI (connquota.testing.controlplane).

ca = TestCA.create()
server_ctx = ca.server_context(["127.0.0.1", "localhost"])
client_ctx = ca.client_context()
ca.write(tmp_path)  # ca.pem, server.pem, server-key.pem for processes
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# Certificates outlive any test session (the control plane's are issued at its start).
VALIDITY = datetime.timedelta(days=2)


@dataclass
class TestCA:
    """A self-signed CA (ECDSA P-256, valid two days) that issues server and client
    certificates: the one CA of the tests (wss:// servers, the test control plane's PKI)."""

    __test__ = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "connquota test CA") -> TestCA:
        """A new CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (what clients trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """A server certificate for ``hosts`` (IP addresses or DNS names): (cert PEM, key PEM)."""
        return self.issue_leaf(hosts[0], hosts=hosts)

    def issue_leaf(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        hosts: Sequence[str] = (),
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        """A leaf certificate and its key (PEM): a server one for ``hosts`` (IP addresses or
        DNS names, in its subjectAltName), a client one with ``client`` (``organizations``
        are the groups Kubernetes reads from a client certificate), or both."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        usages = [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] if hosts else []
        if client:
            usages.append(x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    def server_context(self, hosts: list[str]) -> ssl.SSLContext:
        """An SSL context serving a certificate for ``hosts`` issued by this CA."""
        cert_pem, key_pem = self.issue(hosts)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp) / "server.pem", Path(tmp) / "server-key.pem"
            cert_path.write_bytes(cert_pem + self.cert_pem)
            key_path.write_bytes(key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(cadata=self.cert_pem.decode())
        return context

    def write(self, directory: Path, hosts: list[str] | None = None) -> dict[str, Path]:
        """Write ``ca.pem``, ``server.pem`` (chain) and ``server-key.pem`` for processes."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self.issue(hosts or ["127.0.0.1", "localhost"])
        paths = {
            "ca": directory / "ca.pem",
            "cert": directory / "server.pem",
            "key": directory / "server-key.pem",
        }
        paths["ca"].write_bytes(self.cert_pem)
        paths["cert"].write_bytes(cert_pem + self.cert_pem)
        paths["key"].write_bytes(key_pem)
        paths["key"].chmod(0o600)
        return paths
