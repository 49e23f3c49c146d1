"""Servers under test for bench/: xmppd and Prosody 0.12, each in a private temporary directory.

Each adapter prepares its server once (configuration, certificate, accounts) and then starts a fresh
process for every scenario, pinned to CPU 0 on a fresh loopback port, so no scenario inherits
another's heap. Child processes get their own process group (a Ctrl-C at the terminal reaches only
the orchestrator, which stops them in order) and die with the orchestrator (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import hmac
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
SERVER_CPU = "0"
DOMAIN = "localhost"
SCRAM_ITERATIONS = 4096
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A server could not be prepared or started; the message says why."""


# --- child processes ------------------------------------------------------------------------------


def _child_setup() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu: str, command: Sequence[str]) -> list[str]:
    """Prefix ``taskset -c cpu`` when there is more than one CPU to pin to."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *command]
    return list(command)


def spawn(
    command: Sequence[str],
    *,
    stdout: IO[bytes] | int | None,
    stderr: IO[bytes] | int | None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, killed if the orchestrator dies."""
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        preexec_fn=_child_setup,
        process_group=0,
    )


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL the whole process group the child leads."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored SIGTERM for %.0fs; killing it", process.pid, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Wait until the server accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with status {process.returncode}\n{tail(log)}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"server not listening on port {port} after {timeout:.0f}s\n{tail(log)}")


def tail(log: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"  | {line}" for line in text[-lines:])


# --- credentials and certificate ----------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``localhost`` (the key type xmppd generates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{DOMAIN}.crt", directory / f"{DOMAIN}.key"
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


def prosody_account(password: str) -> str:
    """One mod_auth_internal_hashed record (SCRAM-SHA-1, random salt) as a Prosody data file."""
    salt = secrets.token_hex(16)  # Prosody itself uses a UUID string; any string will do
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), SCRAM_ITERATIONS)
    stored_key = hashlib.sha1(hmac.digest(salted, b"Client Key", "sha1")).hexdigest()
    server_key = hmac.digest(salted, b"Server Key", "sha1").hex()
    return (
        "return {\n"
        f'\t["iteration_count"] = {SCRAM_ITERATIONS};\n'
        f'\t["salt"] = "{salt}";\n'
        f'\t["server_key"] = "{server_key}";\n'
        f'\t["stored_key"] = "{stored_key}";\n'
        "};\n"
    )


def _prosody_accounts(password: str, count: int) -> list[str]:
    return [prosody_account(password) for _ in range(count)]


def lua_escape(text: str) -> str:
    """util.datamanager's path encoding: every non-alphanumeric byte as %xx."""
    return "".join(c if c.isascii() and c.isalnum() else f"%{ord(c):02x}" for c in text)


def git_revision() -> str:
    """Short commit of the xmppd tree, with +dirty when it has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


# --- the servers --------------------------------------------------------------------------------


class Server:
    """A server under test: ``prepare`` once, then ``running()`` per scenario."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / f"{self.name}.log"
        self.version = "unknown"
        # "plain": no stream management, no archive (the durability scenarios' baseline);
        # "durable": both on; "default": the server's own defaults. Set before running().
        self.profile = "default"

    def prepare(self, usernames: Sequence[str], password: str) -> None:
        """Write configuration and create accounts; raises BenchError when impossible."""
        raise NotImplementedError

    def command(self, port: int) -> list[str]:
        """The command line that serves c2s on 127.0.0.1:port."""
        raise NotImplementedError

    def server_pid(self, process: subprocess.Popen[bytes]) -> int:
        """The pid whose memory is measured."""
        return process.pid

    @contextlib.contextmanager
    def running(self, start_timeout: float = 60.0) -> Iterator[tuple[int, int]]:
        """Start a fresh server process pinned to CPU 0; yields (port, pid); stops it after."""
        port = free_port()
        with self.log.open("a") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} starting on port {port}\n")
        with self.log.open("ab") as log:
            command = pinned(SERVER_CPU, self.command(port))
            process = spawn(command, stdout=log, stderr=log, cwd=self.workdir)
        try:
            wait_listening(process, port, self.log, start_timeout)
            yield port, self.server_pid(process)
            if process.poll() is not None:
                raise BenchError(f"server died during the scenario\n{tail(self.log)}")
        finally:
            stop(process)


class ProsodyServer(Server):
    """Prosody 0.12 from Debian: epoll backend, internal_hashed auth, a minimal module set."""

    name = "prosody"
    executable = "/usr/bin/prosody"
    gc_mode = "incremental"  # Prosody's default; "generational" trades memory for speed

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.config = workdir / "prosody.cfg.lua"
        self.data = workdir / "data"
        self.pidfile = workdir / "prosody.pid"

    def prepare(self, usernames: Sequence[str], password: str) -> None:
        if not Path(self.executable).exists():
            raise BenchError("prosody is not installed (apt-get install -y prosody)")
        version_file = Path("/usr/lib/prosody/prosody.version")
        if version_file.exists():
            self.version = f"{version_file.read_text().strip()} gc={self.gc_mode}"
        self.cert, self.key = make_certificate(self.workdir)
        accounts = self.data / lua_escape(DOMAIN) / "accounts"
        accounts.mkdir(parents=True)
        # PBKDF2 per account is ~1 ms: split the work over every CPU
        chunks = [usernames[i : i + 500] for i in range(0, len(usernames), 500)]
        with ProcessPoolExecutor() as pool:
            records = pool.map(_prosody_accounts, [password] * len(chunks), map(len, chunks))
            for chunk, texts in zip(chunks, records, strict=True):
                for username, text in zip(chunk, texts, strict=True):
                    (accounts / f"{lua_escape(username)}.dat").write_text(text)

    def command(self, port: int) -> list[str]:
        self._write_config(port)
        return [self.executable, "-F", "--config", str(self.config)]

    def _write_config(self, port: int) -> None:
        # Prosody refuses to run as root unless told to (mod_posix); the bench often runs as root.
        # durable: XEP-0198 and XEP-0313 (archiving every message by default), on its default
        # internal storage.
        durable = ' "smacks"; "mam";' if self.profile == "durable" else ""
        # muc: Prosody's MUC component with its defaults (rooms locked until configured, a
        # 20-message history, no room archive: mod_muc_mam is not loaded)
        muc = f'\nComponent "conference.{DOMAIN}" "muc"\n' if self.profile == "muc" else ""
        self.config.write_text(
            f"""-- generated by bench/servers.py for one benchmark run
run_as_root = {"true" if os.getuid() == 0 else "false"}
pidfile = "{self.pidfile}"
data_path = "{self.data}"
log = {{ info = "{self.workdir / "prosody-server.log"}" }}
network_backend = "epoll"  -- the 0.12 default, named for the record
gc = {{ mode = "{self.gc_mode}" }}  -- Lua 5.4; "incremental" is Prosody's own default

interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}

-- The default set of a minimal server, without HTTP, s2s, PEP, MAM or rate limits.
-- presence, message, iq, offline and c2s are loaded implicitly.
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "version"; "uptime"; "posix";{durable}
}}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; "dialback" }}

authentication = "internal_hashed"
storage = "internal"
default_archive_policy = true
c2s_require_encryption = true
allow_registration = false
ssl = {{ certificate = "{self.cert}"; key = "{self.key}" }}

VirtualHost "{DOMAIN}"
{muc}"""
        )

    def server_pid(self, process: subprocess.Popen[bytes]) -> int:
        """taskset, env and lua5.4 exec in place, so the child is Prosody; the pidfile agrees."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return process.pid


class XmppdServer(Server):
    """xmppd from the project venv: ``xmppd --config FILE serve``."""

    name = "xmppd"
    executable = VENV / "bin" / "xmppd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.config = workdir / "xmppd.toml"
        self.data = workdir / "data"

    def prepare(self, usernames: Sequence[str], password: str) -> None:
        if not self.executable.exists():
            raise BenchError(
                f"xmppd is not installed: {self.executable} is missing "
                f"(install the project into its venv: {VENV}/bin/pip install -e {ROOT})"
            )
        self.version = f"{self._package_version()} {git_revision()}"
        self.data.mkdir()
        self._write_config(free_port())
        lines = "".join(f"{name}@{DOMAIN} {password}\n" for name in usernames)
        try:
            done = subprocess.run(
                [str(self.executable), "--config", str(self.config), "adduser", "--batch"],
                input=lines.encode(),
                capture_output=True,
                timeout=1800,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError("xmppd adduser --batch timed out") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()[-2000:]
            raise BenchError(f"xmppd adduser --batch failed ({done.returncode}):\n{output}")

    def _package_version(self) -> str:
        done = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", "import xmppd; print(xmppd.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() or "unknown"

    def command(self, port: int) -> list[str]:
        self._write_config(port)
        return [str(self.executable), "--config", str(self.config), "serve"]

    def _write_config(self, port: int) -> None:
        modules = ""
        if self.profile == "plain":
            # every module but the archive and stream management (both off)
            names = sorted(
                path.stem if path.suffix == ".py" else path.name
                for path in (ROOT / "xeps").iterdir()
                if not path.name.startswith("_")
                and (path.suffix == ".py" or (path / "__init__.py").exists())
            )
            kept = [name for name in names if name not in ("mam", "stream_management")]
            modules = "modules_enabled = [" + ", ".join(f'"{n}"' for n in kept) + "]\n"
        self.config.write_text(
            f"""# generated by bench/servers.py for one benchmark run
data_dir = "{self.data}"
hosts = ["{DOMAIN}"]
{modules}
[listen]
c2s = ["127.0.0.1:{port}"]
c2s_direct_tls = []
"""
        )


class NullServer(Server):
    """bench/nullserver.py: negotiates and relays bytes; calibrates the load client's ceiling."""

    name = "null"

    def prepare(self, usernames: Sequence[str], password: str) -> None:
        self.version = "calibration"
        self.password = password
        self.cert, self.key = make_certificate(self.workdir)

    def command(self, port: int) -> list[str]:
        script = Path(__file__).resolve().parent / "nullserver.py"
        return [
            *(sys.executable, str(script), "--port", str(port), "--password", self.password),
            *("--cert", str(self.cert), "--key", str(self.key)),
        ]


SERVERS: dict[str, type[Server]] = {
    "xmppd": XmppdServer,
    "prosody": ProsodyServer,
    "null": NullServer,
}
