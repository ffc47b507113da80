"""The C2PA signing credentials: an ES256 certificate chain and its private key.

Production reads a chain (leaf first, PEM) and the leaf's PKCS#8 key from files
(`ATELIER_C2PA_CERT`, `ATELIER_C2PA_KEY`; in the chart a Secret). Without them the control
plane creates a self-signed development CA and a leaf under `ATELIER_HOME/c2pa/` once, and says
that it is for development. Verification trusts the root of the configured chain (or
`ATELIER_C2PA_TRUST_ANCHORS`): "trusted" means "signed by this deployment".

c2pa-rs rejects some certificate shapes: a self-signed leaf, a leaf without the
digitalSignature key usage or without an allowed extended key usage (emailProtection is one),
a CA without keyCertSign. The development pair has exactly the shape it accepts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.adapters.atomic_files import write_atomically

_logger = logging.getLogger(__name__)

DEVELOPMENT_ORGANIZATION = "atelier development (not for production)"
CHAIN_FILE, KEY_FILE, ROOT_FILE = "chain.pem", "signer.key", "root.pem"


class SigningCredentialsError(ValueError):
    """The chain or key files are missing, unreadable or unusable; the message says which and why."""


@dataclass(frozen=True)
class SigningCredentials:
    """What signs manifests and what verification trusts."""

    chain_pem: bytes
    """The signing certificate first, then its issuers (PEM)."""
    key_pem: bytes = field(repr=False)
    """The signing certificate's EC P-256 private key (PEM)."""
    trust_anchors_pem: bytes
    """Root certificates a manifest must chain to to be reported trusted (PEM)."""
    development: bool
    """A self-signed development pair, not a deployment's real certificate."""


def load_signing_credentials(
    chain_file: Path, key_file: Path, trust_anchors_file: Path | None = None
) -> SigningCredentials:
    """Loads and checks a deployment's chain and key.

    Raises:
        SigningCredentialsError: A file is unreadable, the chain has no certificate, the key is
            not an EC P-256 key, or the key does not belong to the chain's first certificate.
    """
    chain_pem = _read(chain_file, "certificate chain (ATELIER_C2PA_CERT)")
    key_pem = _read(key_file, "signing key (ATELIER_C2PA_KEY)")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise SigningCredentialsError(f"{chain_file} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SigningCredentialsError(f"{key_file} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningCredentialsError(f"{key_file} must be an EC P-256 key (ES256 signing)")
    if key.public_key() != chain[0].public_key():
        raise SigningCredentialsError(f"{key_file} is not the key of the first certificate in {chain_file}")
    if trust_anchors_file is not None:
        anchors = _read(trust_anchors_file, "trust anchors (ATELIER_C2PA_TRUST_ANCHORS)")
    else:
        anchors = chain[-1].public_bytes(serialization.Encoding.PEM)
    return SigningCredentials(chain_pem=chain_pem, key_pem=key_pem, trust_anchors_pem=anchors, development=False)


def ensure_development_credentials(
    directory: Path, *, now: datetime | None = None, warn: bool = True
) -> SigningCredentials:
    """The development pair in `directory`, created (key files 0600) on first use.

    Logs a warning when it creates one (unless `warn` is False: the caller says it itself): such a
    pair proves nothing outside this machine.
    """
    chain_file, key_file, root_file = directory / CHAIN_FILE, directory / KEY_FILE, directory / ROOT_FILE
    if not (chain_file.exists() and key_file.exists() and root_file.exists()):
        chain_pem, key_pem, root_pem = create_development_chain(now or datetime.now(UTC))
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(root_file, root_pem)
        write_atomically(chain_file, chain_pem)
        write_atomically(key_file, key_pem)
        if warn:
            _logger.warning(
                "created a self-signed C2PA development certificate in %s: it is for development only; "
                "set ATELIER_C2PA_CERT and ATELIER_C2PA_KEY in production",
                directory,
            )
    loaded = load_signing_credentials(chain_file, key_file, root_file)
    return SigningCredentials(
        chain_pem=loaded.chain_pem, key_pem=loaded.key_pem, trust_anchors_pem=loaded.trust_anchors_pem, development=True
    )


def create_development_chain(now: datetime, organization: str = DEVELOPMENT_ORGANIZATION) -> tuple[bytes, bytes, bytes]:
    """A new CA and ES256 leaf in the shape c2pa accepts: (chain PEM, leaf key PEM, root PEM)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{organization} CA", organization)
    root = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        _builder(
            _name(f"{organization} signer", organization), ca_name, leaf_key.public_key(), now, timedelta(days=730)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem) + root.public_bytes(pem), key_pem, root.public_bytes(pem)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SigningCredentialsError(f"cannot read the C2PA {what} {path}: {error.strerror}") from None


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime, lifetime: timedelta
) -> x509.CertificateBuilder:
    # Backdated a few minutes: a verifier whose clock is slightly behind must not see a future certificate.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
