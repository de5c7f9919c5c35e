"""Asymmetric test keys for the mock exchange (Binance RSA / Ed25519 API keys, Coinbase CDP
EC P-256 keys).

An exchange that takes RSA or Ed25519 API keys holds only the public key; the client signs with
the private key. Tests generate a pair, give the mock a `TestAccount` with the public key, and
give the gateway the private key in its Secret files.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from connquota.mockexchange.settings import TestAccount


def generate_key_pair(kind: str = "ed25519") -> tuple[str, str]:
    """A new ``(private PEM, public PEM)`` pair; ``kind`` is ``ed25519``, ``rsa`` or ``ec``
    (P-256, Coinbase's ES256 keys)."""
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"no {kind!r} keys: ed25519, rsa or ec")
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def asymmetric_account(
    api_key: str, account_id: str, kind: str = "ed25519"
) -> tuple[TestAccount, str]:
    """A test account holding a new public key, and the private key PEM to sign with."""
    private, public = generate_key_pair(kind)
    return TestAccount(api_key, "", account_id=account_id, public_key=public), private
