"""RFC 6120 §5 / RFC 6125 / RFC 5929: TLS certificates, keys and server contexts.

Everything the server needs from TLS material, called at startup or from the CLI (``xmppd cert``
and ``xmppd check``), never on the hot path:

- `generate_self_signed`: an ECDSA P-256 certificate covering each domain and its usual
  service subdomains (P-256 handshakes cost about 1/15 of RSA-2048, DESIGN §5);
- `load_info` and `check`: what a certificate covers and what is wrong with a cert/key pair,
  as human-readable findings;
- `import_letsencrypt`: copy certbot's ``live/<domain>/{fullchain,privkey}.pem`` into the
  server's certificate directory;
- `server_context` and `sni_context`: `ssl.SSLContext` objects for listeners, one per
  domain, selected by the client's SNI;
- `tls_server_end_point`: the RFC 5929 §4.1 channel binding for SCRAM-*-PLUS.

Files holding private keys are written atomically with mode 0600, and directories created
here get mode 0700.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import ssl
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv6Address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xmppd.jid import prep_domain

__all__ = [
    "CertInfo",
    "check",
    "generate_self_signed",
    "import_letsencrypt",
    "load_info",
    "server_context",
    "sni_context",
    "tls_server_end_point",
]

logger = logging.getLogger(__name__)

SERVICE_PREFIXES = ("conference", "upload", "pubsub")
EXPIRY_WARNING = timedelta(days=14)
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700
_CN_MAX = 64  # RFC 5280 ub-common-name
_LE_SUFFIX = re.compile(r"-\d{4}$")  # certbot's "example.org-0001" lineage names


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a certificate file says about itself.

    Attributes:
        path: the certificate file.
        names: the subjectAltName dNSName entries of the leaf certificate, in order.
        not_before: start of validity (aware, UTC).
        not_after: end of validity (aware, UTC).
        self_signed: issuer equals subject and the certificate verifies with its own key.
    """

    path: Path
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    self_signed: bool


# ---- names ---------------------------------------------------------------------------------


def _to_ascii(domain: str) -> str:
    """Prepare a domain (RFC 7622 §3.2) and return it in A-label form, as certificates hold it."""
    prepared = prep_domain(domain)
    return ".".join(
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in prepared.split(".")
    )


def _name_matches(pattern: str, domain: str) -> bool:
    """RFC 6125 §6.4: match a dNSName against an A-label domain, both lowercase.

    A wildcard is honoured only as the whole left-most label (``*.example.org``) and matches
    exactly one label: not ``example.org`` itself and not ``a.b.example.org``.
    """
    pattern = pattern.lower().rstrip(".")
    if pattern == domain:
        return True
    if not pattern.startswith("*."):
        return False
    rest = pattern[2:]
    if "*" in rest or "." not in domain:
        return False
    head, _, tail = domain.partition(".")
    return bool(head) and tail == rest


def _covered(names: Sequence[str], domain: str) -> bool:
    return any(_name_matches(name, domain) for name in names)


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.value.get_values_for_type(x509.DNSName))


# ---- files ---------------------------------------------------------------------------------


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700; leave existing ones alone."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=_DIR_MODE, exist_ok=True)
        path.chmod(_DIR_MODE)  # mkdir's mode is filtered through the umask


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode``, then rename.

    The temporary file is created with its final mode, so a private key is never readable by
    others, not even briefly; readers see either the old file or the complete new one.
    """
    _make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # os.open's mode is filtered through the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_certificate(data: bytes) -> x509.Certificate:
    """Return the first (leaf) certificate of a PEM file such as ``fullchain.pem``."""
    return x509.load_pem_x509_certificates(data)[0]


def _load_key(data: bytes) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(data, password=None)


def _public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _public_der(cert) == _public_der(key)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# ---- public API ----------------------------------------------------------------------------


def generate_self_signed(
    domains: Sequence[str], cert_path: Path, key_path: Path, *, days: int = 3650
) -> None:
    """Write a self-signed ECDSA P-256 certificate and its key for ``domains``.

    The subjectAltName holds, for each domain ``d``: ``d``, ``conference.d``, ``upload.d``,
    ``pubsub.d`` and ``*.d``, in A-label form; the subject CN is the first domain. The key is
    written atomically with mode 0600, the certificate with mode 0644, and missing parent
    directories are created with mode 0700.

    Args:
        domains: the served domains, first one is the subject CN.
        cert_path: where to write the PEM certificate.
        key_path: where to write the PEM (PKCS #8, unencrypted) private key.
        days: validity period.

    Raises:
        ValueError: no domain given, or a domain is not a valid domain name.
    """
    if not domains:
        raise ValueError("at least one domain is needed for a certificate")
    general_names: list[x509.GeneralName] = []
    seen: set[str] = set()

    def add(name: x509.GeneralName, key: str) -> None:
        if key not in seen:
            seen.add(key)
            general_names.append(name)

    for domain in domains:
        ascii_domain = _to_ascii(domain)
        if ascii_domain.startswith("["):
            add(x509.IPAddress(IPv6Address(ascii_domain[1:-1])), ascii_domain)
            continue
        for name in (
            ascii_domain,
            *(f"{prefix}.{ascii_domain}" for prefix in SERVICE_PREFIXES),
            f"*.{ascii_domain}",
        ):
            add(x509.DNSName(name), name)

    first = _to_ascii(domains[0])
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= _CN_MAX else []
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little so that a peer with a slow clock accepts it at once.
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
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
        # clientAuth too: server-to-server peers present the same certificate (RFC 6120 §13.7).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, _KEY_MODE)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    logger.info("wrote self-signed certificate %s for %s", cert_path, ", ".join(domains))


def load_info(cert_path: Path) -> CertInfo:
    """Read the leaf certificate of a PEM file.

    Args:
        cert_path: a PEM file; with a chain (``fullchain.pem``) the first certificate is used.

    Returns:
        The certificate's names, validity and whether it is self-signed.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file holds no PEM certificate.
    """
    cert = _load_certificate(cert_path.read_bytes())
    return CertInfo(
        path=cert_path,
        names=_san_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        self_signed=_is_self_signed(cert),
    )


def check(
    cert_path: Path, key_path: Path, domain: str, *, now: datetime | None = None
) -> list[str]:
    """Report what is wrong with a certificate and key for serving ``domain``.

    Args:
        cert_path: PEM certificate (chain) file.
        key_path: PEM private key file.
        domain: the domain the certificate must cover (RFC 6125 §6.4, wildcards included).
        now: the time to check validity against (aware); defaults to the current time.

    Returns:
        Human-readable findings; an empty list means the pair is fine.
    """
    now = now or datetime.now(UTC)
    findings: list[str] = []

    cert: x509.Certificate | None = None
    try:
        cert = _load_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        findings.append(f"certificate file {cert_path} does not exist")
    except OSError as exc:
        findings.append(f"certificate file {cert_path} cannot be read: {exc.strerror or exc}")
    except ValueError:
        findings.append(f"certificate file {cert_path} holds no valid PEM certificate")

    key: PrivateKeyTypes | None = None
    try:
        key = _load_key(key_path.read_bytes())
    except FileNotFoundError:
        findings.append(f"key file {key_path} does not exist")
    except OSError as exc:
        findings.append(f"key file {key_path} cannot be read: {exc.strerror or exc}")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        findings.append(f"key file {key_path} holds no valid unencrypted PEM private key")
    try:
        key_mode = stat.S_IMODE(key_path.stat().st_mode)
    except OSError:
        pass  # already reported above
    else:
        if key_mode & 0o077:
            findings.append(
                f"key file {key_path} has permissions {key_mode:04o}, looser than 0600"
                f" (fix with: chmod 600 {key_path})"
            )

    if cert is None:
        return findings
    if key is not None and not _key_matches(cert, key):
        findings.append(f"key {key_path} does not match certificate {cert_path}")

    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        findings.append(
            f"certificate {cert_path} is not valid before {not_before:%Y-%m-%d %H:%M} UTC"
        )
    if now > not_after:
        findings.append(f"certificate {cert_path} expired on {not_after:%Y-%m-%d %H:%M} UTC")
    elif not_after - now <= EXPIRY_WARNING:
        days = (not_after - now).days
        findings.append(
            f"certificate {cert_path} expires in {days} day{'s' if days != 1 else ''},"
            f" on {not_after:%Y-%m-%d %H:%M} UTC"
        )

    names = _san_names(cert)
    try:
        ascii_domain = _to_ascii(domain)
    except ValueError:
        findings.append(f"{domain!r} is not a valid domain name")
    else:
        if not _covered(names, ascii_domain):
            listed = ", ".join(names) if names else "no subjectAltName DNS names"
            findings.append(f"certificate {cert_path} does not cover {domain} (it has: {listed})")
    return findings


def import_letsencrypt(live_dir: Path, certs_dir: Path) -> list[str]:
    """Copy certbot certificates into the server's certificate directory.

    Accepts either certbot's ``live`` directory (``live_dir/<domain>/fullchain.pem`` and
    ``privkey.pem``) or one domain's folder holding those two files. Each pair is checked
    before anything is written, then copied to ``certs_dir/<domain>.crt`` (mode 0644) and
    ``certs_dir/<domain>.key`` (mode 0600).

    Args:
        live_dir: ``/etc/letsencrypt/live`` or ``/etc/letsencrypt/live/<domain>``.
        certs_dir: the server's certificate directory, created with mode 0700 if missing.

    Returns:
        The imported domains, sorted.

    Raises:
        ValueError: no certificate found, a file cannot be read or parsed, or a key does not
            match its certificate. Nothing is written in that case.
    """
    if (live_dir / "fullchain.pem").is_file():
        folders = [live_dir]
    elif live_dir.is_dir():
        folders = sorted(
            path
            for path in live_dir.iterdir()
            if path.is_dir() and (path / "fullchain.pem").is_file()
        )
    else:
        folders = []
    if not folders:
        raise ValueError(
            f"no Let's Encrypt certificate found in {live_dir}: expected <domain>/fullchain.pem"
            " and <domain>/privkey.pem, or a folder holding those two files"
        )

    pairs: dict[str, tuple[bytes, bytes]] = {}
    for folder in folders:
        chain_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
        try:
            chain_pem, key_pem = chain_path.read_bytes(), key_path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read {exc.filename or folder}: {exc.strerror or exc}"
                " (certbot's files are readable by root only)"
            ) from exc
        try:
            cert = _load_certificate(chain_pem)
        except ValueError as exc:
            raise ValueError(f"{chain_path} holds no valid PEM certificate") from exc
        try:
            key = _load_key(key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{key_path} holds no valid unencrypted PEM private key") from exc
        if not _key_matches(cert, key):
            raise ValueError(f"{key_path} does not match the certificate in {chain_path}")
        pairs[_lineage_domain(folder.name, _san_names(cert))] = (chain_pem, key_pem)

    for domain, (chain_pem, key_pem) in pairs.items():
        _write_atomic(certs_dir / f"{domain}.key", key_pem, _KEY_MODE)
        _write_atomic(certs_dir / f"{domain}.crt", chain_pem, _CERT_MODE)
        logger.info("imported Let's Encrypt certificate for %s into %s", domain, certs_dir)
    return sorted(pairs)


def _lineage_domain(folder: str, names: Sequence[str]) -> str:
    """The domain a certbot lineage folder is for: its name, without a ``-0001`` suffix."""
    folder = folder.lower()
    names = [name.lower() for name in names]
    if folder in names or not names:
        return folder
    stripped = _LE_SUFFIX.sub("", folder)
    if stripped in names:
        return stripped
    plain = [name for name in names if not name.startswith("*.")]
    return (plain or [folder])[0]


def server_context(
    cert_path: Path, key_path: Path, *, alpn: Sequence[str] = ("xmpp-client",)
) -> ssl.SSLContext:
    """Build a server-side TLS context (RFC 6120 §5, RFC 7590) for one certificate.

    TLS 1.2 is the minimum and compression is off. ALPN (XEP-0368 ``xmpp-client``) is selected
    when the client offers it; a client that offers no ALPN, or other protocols only, still
    completes the handshake.

    Args:
        cert_path: PEM certificate chain.
        key_path: PEM private key.
        alpn: protocols to select, in order of preference; empty for none.

    Returns:
        The context.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the certificate or key is invalid, or they do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # TLS 1.3: one session ticket is enough for a client's next (resumed) connection; OpenSSL's
    # default of two costs an extra ticket encryption on every handshake.
    context.num_tickets = 1
    if alpn:
        context.set_alpn_protocols(list(alpn))
    context.load_cert_chain(cert_path, key_path)
    return context


def sni_context(contexts: Mapping[str, ssl.SSLContext], default: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``default`` pick a per-domain context from the client's SNI server name.

    The name is looked up exactly, then its parent domain (so ``conference.example.org`` uses
    the context of ``example.org``); anything else, and clients sending no SNI, keep
    ``default``.

    Args:
        contexts: domain → context; domains may be given in U-label or A-label form.
        default: the context listeners wrap sockets with; it is modified and returned.

    Returns:
        ``default``, with its ``sni_callback`` set.
    """
    by_name: dict[str, ssl.SSLContext] = {}
    for domain, context in contexts.items():
        try:
            by_name[_to_ascii(domain)] = context
        except ValueError:
            by_name[domain.lower()] = context

    def select(ssl_object: ssl.SSLObject, server_name: str, _: ssl.SSLContext) -> None:
        # The server name arrives in A-label form; None when the client sent no SNI.
        if not server_name:
            return
        name = server_name.lower().rstrip(".")
        chosen = by_name.get(name)
        if chosen is None and "." in name:
            chosen = by_name.get(name.partition(".")[2])
        if chosen is not None:
            ssl_object.context = chosen

    default.sni_callback = select
    return default


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 §4.1: the ``tls-server-end-point`` channel binding of a certificate.

    The hash of the DER certificate with its signature's hash algorithm, except that MD5 and
    SHA-1 are replaced by SHA-256. RFC 5929 leaves signatures without a single hash (Ed25519,
    Ed448) undefined; SHA-256 is used for them, as common implementations do.

    Args:
        cert_der: the server's leaf certificate, DER-encoded.

    Returns:
        The channel-binding data.

    Raises:
        ValueError: ``cert_der`` is not a DER certificate.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    algorithm: hashes.HashAlgorithm | None
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()
