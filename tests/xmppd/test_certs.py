"""TLS material: self-signed generation, checks, Let's Encrypt import, contexts, channel binding."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from xmppd import certs
from xmppd.certs import (
    check,
    generate_self_signed,
    import_letsencrypt,
    load_info,
    server_context,
    sni_context,
    tls_server_end_point,
)

CertKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _build_cert(
    names: list[str],
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: CertKey | None = None,
    algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
) -> tuple[x509.Certificate, CertKey]:
    """A self-signed certificate with full control over validity, key and signature hash."""
    now = datetime.now(UTC)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    if algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, algorithm)
    )
    return cert, key


def _write_pair(
    directory: Path, cert: x509.Certificate, key: CertKey, *, stem: str = "server"
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, Path]:
    cert_path, key_path = (
        tmp_path / "certs" / "example.org.crt",
        tmp_path / "certs" / "example.org.key",
    )
    generate_self_signed(["example.org"], cert_path, key_path)
    return cert_path, key_path


# ---- generate_self_signed / load_info ------------------------------------------------------


def test_generate_self_signed_names_and_info(generated: tuple[Path, Path]) -> None:
    cert_path, _ = generated
    info = load_info(cert_path)
    assert info.path == cert_path
    assert info.names == (
        "example.org",
        "conference.example.org",
        "upload.example.org",
        "pubsub.example.org",
        "*.example.org",
    )
    assert info.self_signed
    now = datetime.now(UTC)
    assert info.not_before <= now
    assert info.not_after - now > timedelta(days=3640)


def test_generate_self_signed_is_p256_with_cn_of_first_domain(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "c.crt", tmp_path / "c.key"
    generate_self_signed(["example.org", "example.net"], cert_path, key_path, days=30)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["example.org"]
    info = load_info(cert_path)
    assert "conference.example.net" in info.names
    assert "*.example.net" in info.names
    assert info.not_after - datetime.now(UTC) < timedelta(days=31)


def test_generate_self_signed_file_modes(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    cert_path = existing / "a" / "b" / "server.crt"
    key_path = existing / "a" / "keys" / "server.key"
    old_umask = os.umask(0o022)
    try:
        generate_self_signed(["example.org"], cert_path, key_path)
    finally:
        os.umask(old_umask)
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644
    for directory in (existing / "a", existing / "a" / "b", existing / "a" / "keys"):
        assert _mode(directory) == 0o700
    assert _mode(existing) == 0o755  # existing directories are left alone
    assert [p.name for p in key_path.parent.iterdir()] == ["server.key"]  # no temp file left


def test_generate_self_signed_overwrites_atomically(generated: tuple[Path, Path]) -> None:
    cert_path, key_path = generated
    before = cert_path.read_bytes()
    generate_self_signed(["example.org"], cert_path, key_path)
    assert cert_path.read_bytes() != before
    assert check(cert_path, key_path, "example.org") == []
    assert sorted(p.name for p in cert_path.parent.iterdir()) == [
        "example.org.crt",
        "example.org.key",
    ]


def test_generate_self_signed_idn_uses_a_labels(tmp_path: Path) -> None:
    generate_self_signed(["B\u00fccher.example"], tmp_path / "c.crt", tmp_path / "c.key")
    info = load_info(tmp_path / "c.crt")
    assert info.names[0] == "xn--bcher-kva.example"
    assert check(tmp_path / "c.crt", tmp_path / "c.key", "b\u00fccher.example") == []


def test_generate_self_signed_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one domain"):
        generate_self_signed([], tmp_path / "c.crt", tmp_path / "c.key")
    with pytest.raises(ValueError, match="invalid domainpart"):
        generate_self_signed(["not a domain"], tmp_path / "c.crt", tmp_path / "c.key")


def test_load_info_reads_leaf_of_chain_and_not_self_signed(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.org")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca, _ = _build_cert(["Test CA"], key=ca_key)
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    info = load_info(chain)
    assert info.names == ("example.org",)
    assert not info.self_signed


def test_load_info_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_info(tmp_path / "missing.crt")
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(ValueError, match="PEM"):
        load_info(tmp_path / "junk.crt")


# ---- check ---------------------------------------------------------------------------------


def test_check_clean_pair(generated: tuple[Path, Path]) -> None:
    cert_path, key_path = generated
    assert check(cert_path, key_path, "example.org") == []
    assert check(cert_path, key_path, "EXAMPLE.ORG.") == []
    assert check(cert_path, key_path, "conference.example.org") == []
    assert check(cert_path, key_path, "anything.example.org") == []  # wildcard


def test_check_expired_cert(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cert, key = _build_cert(
        ["example.org"], not_before=now - timedelta(days=100), not_after=now - timedelta(days=1)
    )
    cert_path, key_path = _write_pair(tmp_path, cert, key)
    findings = check(cert_path, key_path, "example.org")
    assert len(findings) == 1
    assert "expired" in findings[0]


def test_check_time_findings_with_now_override(generated: tuple[Path, Path]) -> None:
    cert_path, key_path = generated
    info = load_info(cert_path)
    [expired] = check(cert_path, key_path, "example.org", now=info.not_after + timedelta(days=1))
    assert "expired" in expired
    [soon] = check(cert_path, key_path, "example.org", now=info.not_after - timedelta(days=5))
    assert "expires in 4 days" in soon or "expires in 5 days" in soon
    [early] = check(cert_path, key_path, "example.org", now=info.not_before - timedelta(days=1))
    assert "not valid before" in early
    assert check(cert_path, key_path, "example.org", now=info.not_after - timedelta(days=15)) == []


def test_check_wrong_domain(generated: tuple[Path, Path]) -> None:
    cert_path, key_path = generated
    [finding] = check(cert_path, key_path, "example.net")
    assert "does not cover example.net" in finding
    assert "example.org" in finding
    # A wildcard covers exactly one label.
    assert check(cert_path, key_path, "a.b.example.org") != []
    assert check(cert_path, key_path, "badexample.org") != []


def test_check_mismatched_key(tmp_path: Path, generated: tuple[Path, Path]) -> None:
    cert_path, _ = generated
    other_cert, other_key = _build_cert(["example.org"])
    _, other_key_path = _write_pair(tmp_path / "other", other_cert, other_key)
    [finding] = check(cert_path, other_key_path, "example.org")
    assert "does not match" in finding


def test_check_loose_key_permissions(generated: tuple[Path, Path]) -> None:
    cert_path, key_path = generated
    key_path.chmod(0o644)
    [finding] = check(cert_path, key_path, "example.org")
    assert "0644" in finding
    assert "looser than 0600" in finding
    key_path.chmod(0o400)
    assert check(cert_path, key_path, "example.org") == []


def test_check_missing_and_garbage_files(tmp_path: Path) -> None:
    findings = check(tmp_path / "none.crt", tmp_path / "none.key", "example.org")
    assert len(findings) == 2
    assert all("does not exist" in f for f in findings)
    (tmp_path / "junk.crt").write_text("junk")
    (tmp_path / "junk.key").write_text("junk")
    (tmp_path / "junk.key").chmod(0o600)
    findings = check(tmp_path / "junk.crt", tmp_path / "junk.key", "example.org")
    assert len(findings) == 2
    assert "no valid PEM certificate" in findings[0]
    assert "no valid unencrypted PEM private key" in findings[1]


def test_check_cert_without_san_does_not_cover(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = _write_pair(tmp_path, cert, key)
    [finding] = check(cert_path, key_path, "example.org")
    assert "no subjectAltName" in finding


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("example.org", "example.org", True),
        ("Example.ORG", "example.org", True),
        ("example.org.", "example.org", True),
        ("*.example.org", "muc.example.org", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "a.b.example.org", False),
        ("*.example.org", "muc.example.net", False),
        ("a*.example.org", "ab.example.org", False),  # partial-label wildcard not honoured
        ("*b.example.org", "ab.example.org", False),
        ("muc.*.org", "muc.example.org", False),  # wildcard only in the left-most label
        ("*.*.org", "a.b.org", False),
        ("*", "localhost", False),
        ("*.xn--bcher-kva.example", "muc.xn--bcher-kva.example", True),
    ],
)
def test_wildcard_matching(pattern: str, domain: str, expected: bool) -> None:
    assert certs._name_matches(pattern, domain) is expected


# ---- import_letsencrypt --------------------------------------------------------------------


def _letsencrypt_folder(folder: Path, names: list[str], *, archive: Path | None = None) -> None:
    """Lay out certbot's live/<name>/ folder; with ``archive``, as symlinks like certbot does."""
    cert, key = _build_cert(names)
    intermediate, _ = _build_cert(["Fake LE Intermediate"])
    chain = cert.public_bytes(serialization.Encoding.PEM) + intermediate.public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    folder.mkdir(parents=True)
    if archive is None:
        (folder / "fullchain.pem").write_bytes(chain)
        (folder / "privkey.pem").write_bytes(key_pem)
        return
    target = archive / folder.name
    target.mkdir(parents=True)
    (target / "fullchain1.pem").write_bytes(chain)
    (target / "privkey1.pem").write_bytes(key_pem)
    (folder / "fullchain.pem").symlink_to(target / "fullchain1.pem")
    (folder / "privkey.pem").symlink_to(target / "privkey1.pem")


def test_import_letsencrypt_live_layout(tmp_path: Path) -> None:
    live = tmp_path / "letsencrypt" / "live"
    _letsencrypt_folder(
        live / "example.org", ["example.org", "conference.example.org"], archive=tmp_path / "arch"
    )
    _letsencrypt_folder(live / "example.net-0001", ["example.net"])
    (live / "README").write_text("certbot readme")
    certs_dir = tmp_path / "etc" / "certs"

    assert import_letsencrypt(live, certs_dir) == ["example.net", "example.org"]

    assert _mode(certs_dir) == 0o700
    for domain in ("example.org", "example.net"):
        crt, key = certs_dir / f"{domain}.crt", certs_dir / f"{domain}.key"
        assert _mode(key) == 0o600
        assert _mode(crt) == 0o644
        assert not crt.is_symlink()
        assert check(crt, key, domain) == []
    # The whole chain is copied, leaf first.
    assert (certs_dir / "example.org.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 2


def test_import_letsencrypt_single_domain_folder(tmp_path: Path) -> None:
    folder = tmp_path / "live" / "example.org"
    _letsencrypt_folder(folder, ["example.org"])
    assert import_letsencrypt(folder, tmp_path / "certs") == ["example.org"]
    assert (
        check(
            tmp_path / "certs" / "example.org.crt",
            tmp_path / "certs" / "example.org.key",
            "example.org",
        )
        == []
    )


def test_import_letsencrypt_nothing_found(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    with pytest.raises(ValueError, match="no Let's Encrypt certificate found"):
        import_letsencrypt(tmp_path / "live", tmp_path / "certs")
    with pytest.raises(ValueError, match="no Let's Encrypt certificate found"):
        import_letsencrypt(tmp_path / "missing", tmp_path / "certs")
    assert not (tmp_path / "certs").exists()


def test_import_letsencrypt_mismatched_key_writes_nothing(tmp_path: Path) -> None:
    live = tmp_path / "live"
    _letsencrypt_folder(live / "a.example", ["a.example"])
    _letsencrypt_folder(live / "b.example", ["b.example"])
    other_cert, other_key = _build_cert(["b.example"])
    _write_pair(tmp_path / "other", other_cert, other_key)
    (live / "b.example" / "privkey.pem").write_bytes(
        (tmp_path / "other" / "server.key").read_bytes()
    )
    with pytest.raises(ValueError, match="does not match"):
        import_letsencrypt(live, tmp_path / "certs")
    assert not (tmp_path / "certs").exists()


def test_import_letsencrypt_missing_key(tmp_path: Path) -> None:
    folder = tmp_path / "live" / "example.org"
    _letsencrypt_folder(folder, ["example.org"])
    (folder / "privkey.pem").unlink()
    with pytest.raises(ValueError, match="cannot read"):
        import_letsencrypt(folder, tmp_path / "certs")


# ---- server_context / sni_context: real handshakes on loopback -----------------------------


@pytest.fixture
def two_domains(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    pairs = {}
    for domain in ("example.org", "example.net"):
        pair = (tmp_path / f"{domain}.crt", tmp_path / f"{domain}.key")
        generate_self_signed([domain], *pair)
        pairs[domain] = pair
    return pairs


async def _handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    server_hostname: str | None,
) -> tuple[tuple[str, ...], str | None]:
    """Connect over loopback; return the SAN DNS names of the server's cert and the ALPN."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=server_hostname
            )
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            alpn = ssl_object.selected_alpn_protocol()
            writer.close()
            await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return tuple(san.get_values_for_type(x509.DNSName)), alpn


def _client(cafiles: list[Path], alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(cafile)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


async def test_sni_selects_certificate_and_alpn(two_domains: dict[str, tuple[Path, Path]]) -> None:
    contexts = {domain: server_context(*pair) for domain, pair in two_domains.items()}
    default = server_context(*two_domains["example.org"])
    server = sni_context(contexts, default)
    assert server is default
    cafiles = [pair[0] for pair in two_domains.values()]

    names, alpn = await _handshake(server, _client(cafiles, ["xmpp-client"]), "example.net")
    assert names[0] == "example.net"
    assert alpn == "xmpp-client"

    # A service subdomain uses its parent domain's certificate (verified by hostname).
    names, _ = await _handshake(server, _client(cafiles), "conference.example.net")
    assert names[0] == "example.net"
    names, _ = await _handshake(server, _client(cafiles), "EXAMPLE.ORG")
    assert names[0] == "example.org"


async def test_handshake_without_alpn_or_with_other_alpn(
    two_domains: dict[str, tuple[Path, Path]],
) -> None:
    server = server_context(*two_domains["example.org"])
    cafiles = [two_domains["example.org"][0]]
    names, alpn = await _handshake(server, _client(cafiles), "example.org")
    assert names[0] == "example.org"
    assert alpn is None
    _, alpn = await _handshake(server, _client(cafiles, ["h2"]), "example.org")
    assert alpn is None


async def test_unknown_or_missing_sni_gets_default(
    two_domains: dict[str, tuple[Path, Path]],
) -> None:
    contexts = {"example.net": server_context(*two_domains["example.net"])}
    server = sni_context(contexts, server_context(*two_domains["example.org"]))
    client = _client([])
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    names, _ = await _handshake(server, client, "unknown.example.com")
    assert names[0] == "example.org"
    names, _ = await _handshake(server, client, None)
    assert names[0] == "example.org"


def test_server_context_settings(generated: tuple[Path, Path]) -> None:
    context = server_context(*generated)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    other_cert, other_key = _build_cert(["example.org"])
    cert_path, _ = generated
    _, other_key_path = _write_pair(cert_path.parent / "other", other_cert, other_key)
    with pytest.raises(ssl.SSLError):
        server_context(cert_path, other_key_path)


async def test_tls_1_2_client_is_accepted(generated: tuple[Path, Path]) -> None:
    client = _client([generated[0]], ["xmpp-client"])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    names, alpn = await _handshake(server_context(*generated), client, "example.org")
    assert names[0] == "example.org"
    assert alpn == "xmpp-client"


# ---- tls_server_end_point ------------------------------------------------------------------


def test_tls_server_end_point_sha256_for_ecdsa_sha256(generated: tuple[Path, Path]) -> None:
    cert = x509.load_pem_x509_certificate(generated[0].read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_sha384() -> None:
    cert, _ = _build_cert(["example.org"], algorithm=hashes.SHA384())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()


# sha256WithRSAEncryption and the RSA OIDs of the weak hashes differ only in their last byte.
_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
_WEAK_WITH_RSA = {
    "sha1": bytes.fromhex("06092a864886f70d010105"),
    "md5": bytes.fromhex("06092a864886f70d010104"),
}


@pytest.mark.parametrize("weak", sorted(_WEAK_WITH_RSA))
def test_tls_server_end_point_weak_hash_upgraded_to_sha256(weak: str) -> None:
    # cryptography no longer signs with SHA-1 or MD5, so relabel a SHA-256 signature: the
    # channel binding only reads the algorithm, it never verifies the signature.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, _ = _build_cert(["example.org"], key=key)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(_SHA256_WITH_RSA) == 2  # in tbsCertificate and in the outer signature
    relabelled = der.replace(_SHA256_WITH_RSA, _WEAK_WITH_RSA[weak])
    algorithm = x509.load_der_x509_certificate(relabelled).signature_hash_algorithm
    assert algorithm is not None
    assert algorithm.name == weak
    assert tls_server_end_point(relabelled) == hashlib.sha256(relabelled).digest()


def test_tls_server_end_point_ed25519_uses_sha256() -> None:
    cert, _ = _build_cert(["example.org"], key=ed25519.Ed25519PrivateKey.generate())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="asn1"):
        tls_server_end_point(b"not a certificate")
