"""Command line: xmppd [--config FILE] serve|adduser|passwd|deluser|users|check|status|
announce|cert|modules.

Passwords come from the terminal prompt, or from the first line of stdin when stdin is not a
terminal; never from argv. Every verb is safe while `serve` runs on the same data (SQLite WAL
with a busy timeout); `deluser` also ends the user's live sessions through the admin socket.
`status` and `announce [--host HOST] [--subject S] [TEXT]` (TEXT from stdin when omitted: a
headline message from the host to every available session) need the running server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from xmppd import __version__, admin, certs, log
from xmppd import config as config_mod
from xmppd.accounts import AccountError, AccountStore
from xmppd.config import Config, ConfigError
from xmppd.jid import JID, JIDError
from xmppd.storage import Storage, StorageError, open_storage

logger = logging.getLogger("xmppd.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xmppd", description="An XMPP server.")
    parser.add_argument("--config", type=Path, help="TOML config file (else $XMPPD_CONFIG)")
    parser.add_argument("--version", action="version", version=f"xmppd {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("serve", help="run the server in the foreground")
    add = verbs.add_parser("adduser", help="create an account")
    add.add_argument("jid", nargs="?")
    add.add_argument("--batch", action="store_true", help="'JID PASSWORD' lines from stdin")
    verbs.add_parser("passwd", help="change a password").add_argument("jid")
    verbs.add_parser("deluser", help="delete an account, ending its sessions").add_argument("jid")
    verbs.add_parser("users", help="list accounts").add_argument("domain", nargs="?")
    verbs.add_parser("check", help="validate config, certificates, ports and storage")
    verbs.add_parser("status", help="figures of the running server")
    announce = verbs.add_parser(
        "announce", help="send a message to every online user (of a host) of the running server"
    )
    announce.add_argument("--host", help="only this host's users (default: every host)")
    announce.add_argument("--subject", help="subject of the message")
    announce.add_argument("text", nargs="?", help="the message (default: read from stdin)")
    verbs.add_parser("modules", help="list modules and their declared contracts")
    cert = verbs.add_parser("cert", help="certificates").add_subparsers(
        dest="cert_verb", required=True
    )
    cert.add_parser("generate", help="make a self-signed certificate").add_argument("domain")
    cert.add_parser("import", help="import a Let's Encrypt live/ directory").add_argument(
        "dir", type=Path
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `xmppd` console script."""
    args = _parser().parse_args(argv)
    path = args.config or (
        Path(os.environ["XMPPD_CONFIG"]) if os.environ.get("XMPPD_CONFIG") else None
    )
    try:
        config = config_mod.load(path)
    except ConfigError as exc:
        print(f"xmppd: configuration error: {exc}", file=sys.stderr)
        return 2
    verb = args.verb
    # Administrative verbs print their own results; only warnings from the library matter.
    log.setup(config.log_level if verb == "serve" else "warning", config.log_levels)
    try:
        if verb == "serve":
            return _serve(config)
        if verb == "check":
            return asyncio.run(_check(config))
        if verb == "modules":
            return _modules()
        if verb == "cert":
            return _cert(config, args)
        if verb == "status":
            return asyncio.run(_status(config))
        if verb == "announce":
            return asyncio.run(_announce(config, args))
        return asyncio.run(_accounts_verb(config, args))
    except KeyboardInterrupt:
        return 130


# --- serve ----------------------------------------------------------------------------------
def _serve(config: Config) -> int:
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(_serve_async(config)))
    except ConfigError as exc:
        print(f"xmppd: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, StorageError) as exc:
        print(f"xmppd: cannot start: {exc}", file=sys.stderr)
        return 1


async def _serve_async(config: Config) -> int:
    from xmppd.server import Server

    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        try:
            fresh = config_mod.load(config.path)
            log.setup(fresh.log_level, fresh.log_levels)
        except ConfigError as exc:
            logger.error("reload: %s", exc)
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await server.start()
    except BaseException:
        await server.stop("startup failed")
        raise
    _tune_gc()
    await stop.wait()
    logger.info("shutting down")
    await server.stop()
    return 0


def _tune_gc() -> None:
    """Keep the cyclic GC off the latency path of a long-running server.

    Objects alive after start-up (modules, config, caches) are frozen out of collection, and
    young-generation collections run less often: stanza processing makes few reference cycles,
    and each collection is a pause every connection sees.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


# --- accounts -------------------------------------------------------------------------------
async def _open(config: Config) -> Storage:
    await asyncio.to_thread(config.data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    if config.storage == "memory":
        raise ConfigError("storage = 'memory' keeps no accounts between processes")
    return await open_storage("sqlite", path=config.database_path, fsync=config.storage_fsync)


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise AccountError("the passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _user_jid(config: Config, text: str) -> JID:
    try:
        jid = JID.parse(text)
    except JIDError as exc:
        raise AccountError(f"{text!r} is not a valid JID: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise AccountError(f"{text!r} must be a bare user JID (user@domain)")
    if config.host(jid.domain) is None:
        raise AccountError(f"{jid.domain} is not a host of this server")
    return jid


async def _accounts_verb(config: Config, args: argparse.Namespace) -> int:
    try:
        storage = await _open(config)
    except (StorageError, ConfigError) as exc:
        print(f"xmppd: {exc}", file=sys.stderr)
        return 1
    accounts = AccountStore(storage, iterations=config.auth.scram_iterations)
    try:
        if args.verb == "adduser" and args.batch:
            return await _batch(config, accounts)
        if args.verb == "users":
            domains = [args.domain] if args.domain else [h.domain for h in config.hosts]
            for domain in domains:
                for user in await accounts.users(domain):
                    print(f"{user}@{domain}")
            return 0
        if not args.jid:
            raise AccountError("a JID is required")
        jid = _user_jid(config, args.jid)
        if args.verb == "adduser":
            await accounts.create(jid, _read_password(f"Password for {jid}: "))
            print(f"created {jid}")
        elif args.verb == "passwd":
            if not await accounts.exists(jid.domain, jid.local or ""):
                raise AccountError(f"{jid}: no such account")
            await accounts.set_password(jid, _read_password(f"New password for {jid}: "))
            # A running server drops its cached credentials of this account at once.
            await admin.call(config.admin_socket, {"cmd": "account_changed", "jid": str(jid)})
            print(f"password changed for {jid}")
        elif args.verb == "deluser":
            await accounts.delete(jid)
            # A running server ends the sessions, lets its modules act (subscriptions are
            # cancelled) and deletes the account's data; without one, it is deleted here.
            reply = await admin.call(
                config.admin_socket, {"cmd": "account_removed", "jid": str(jid)}
            )
            ended = reply.get("ended", 0) if reply and reply.get("ok") else 0
            if reply is None or not reply.get("ok"):
                await accounts.delete_data(jid)
            print(f"deleted {jid}" + (f" (ended {ended} session(s))" if ended else ""))
        return 0
    except AccountError as exc:
        print(f"xmppd: {exc}", file=sys.stderr)
        return 1
    finally:
        await storage.close()


async def _batch(config: Config, accounts: AccountStore) -> int:
    """Create accounts from 'JID PASSWORD' lines; key derivation runs on worker threads."""
    failures = 0
    created = 0
    limit = asyncio.Semaphore(max(2, (os.cpu_count() or 2) * 2))

    async def one(lineno: int, line: str) -> None:
        nonlocal failures, created
        text, _, password = line.strip().partition(" ")
        try:
            if not password:
                raise AccountError("expected 'JID PASSWORD'")
            async with limit:
                await accounts.create(_user_jid(config, text), password)
            created += 1
        except AccountError as exc:
            failures += 1
            print(f"line {lineno}: {exc}", file=sys.stderr)

    lines = [(n, line) for n, line in enumerate(sys.stdin, 1) if line.strip()]
    await asyncio.gather(*(one(n, line) for n, line in lines))
    print(f"created {created} account(s), {failures} failure(s)")
    return 1 if failures else 0


async def _status(config: Config) -> int:
    reply = await admin.call(config.admin_socket, {"cmd": "status"})
    if reply is None:
        print("xmppd: no server is running on this data_dir", file=sys.stderr)
        return 1
    for key, value in reply.items():
        if key != "ok":
            print(f"{key}: {value}")
    return 0


async def _announce(config: Config, args: argparse.Namespace) -> int:
    text = args.text
    if text is None:
        if sys.stdin.isatty():
            print("Announcement (end with Ctrl-D):", file=sys.stderr)
        text = sys.stdin.read()
    text = text.rstrip("\r\n")
    problem = None
    if not text.strip():
        problem = "the announcement text is empty"
    elif len(text) > admin.ANNOUNCE_MAX_BODY:
        problem = f"the text is longer than {admin.ANNOUNCE_MAX_BODY} characters"
    if problem:
        print(f"xmppd: {problem}", file=sys.stderr)
        return 1
    request: dict[str, str] = {"cmd": "announce", "body": text}
    if args.host is not None:
        request["host"] = args.host
    if args.subject is not None:
        request["subject"] = args.subject
    try:
        reply = await admin.call(config.admin_socket, request)
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"xmppd: cannot talk to the running server: {exc}", file=sys.stderr)
        return 1
    if reply is None:
        print("xmppd: no server is running on this data_dir", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"xmppd: {reply.get('error', 'the server refused')}", file=sys.stderr)
        return 1
    hosts = ", ".join(str(h) for h in reply.get("hosts", []))
    print(f"announced to {reply.get('sent', 0)} session(s) on {hosts}")
    return 0


# --- check, cert, modules -------------------------------------------------------------------
async def _check(config: Config) -> int:
    errors = 0

    def finding(level: str, text: str) -> None:
        nonlocal errors
        errors += level == "error"
        print(f"{level}: {text}")

    hosts = ", ".join(h.domain for h in config.hosts)
    print(f"config: {config.path or '<embedded defaults>'} ok; hosts: {hosts}")
    for host in config.hosts:
        cert = host.cert or config.cert or config.certs_dir / f"{host.domain}.crt"
        key = host.key or config.key or config.certs_dir / f"{host.domain}.key"
        if not (host.cert or config.cert) and not cert.exists():
            finding("info", f"{host.domain}: no certificate yet; one is generated at first start")
            continue
        for text in await asyncio.to_thread(certs.check, cert, key, host.domain):
            level = "warning" if "expires within" in text or "self-signed" in text else "error"
            finding(level, f"{host.domain}: {text}")
    listeners = (
        ("c2s", config.c2s),
        ("c2s_direct_tls", config.c2s_direct_tls),
        ("component", config.component),
    )
    for kind, addresses in listeners:
        for address, port in addresses:
            if kind == "component" and address not in ("localhost", "127.0.0.1", "::1"):
                finding("warning", f"listen.component: {address} is not loopback (no TLS)")
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, port))
                except OSError as exc:
                    running = await admin.call(config.admin_socket, {"cmd": "status"})
                    level = "info" if running else "error"
                    finding(
                        level,
                        f"listen.{kind}: cannot bind {address}:{port}: {exc.strerror}"
                        + (" (xmppd is running)" if running else ""),
                    )
    if config.storage == "sqlite":
        try:
            storage = await _open(config)
            await storage.close()
        except (StorageError, OSError) as exc:
            finding("error", f"storage: {exc}")
    try:
        from xmppd.module_manager import build_options, resolve, shipped_modules

        for host in config.hosts:
            names = host.modules_enabled or config.modules_enabled or tuple(shipped_modules())
            options = {**config.modules, **host.modules}
            for name in names:
                build_options(resolve(name), options.get(name, {}), f"modules.{name}")
            for name in options:
                if name not in names:
                    raise ConfigError(f"modules.{name}: options for a module that is not enabled")
    except ConfigError as exc:
        finding("error", str(exc))
    print("check: " + ("FAILED" if errors else "ok"))
    return 1 if errors else 0


def _cert(config: Config, args: argparse.Namespace) -> int:
    try:
        if args.cert_verb == "generate":
            domain = args.domain
            cert, key = config.certs_dir / f"{domain}.crt", config.certs_dir / f"{domain}.key"
            certs.generate_self_signed([domain], cert, key)
            print(f"wrote {cert} and {key}")
        else:
            for domain in certs.import_letsencrypt(args.dir, config.certs_dir):
                print(f"imported {domain} into {config.certs_dir}")
            with contextlib.suppress(OSError):
                pid = _server_pid(config)
                if pid:
                    os.kill(pid, signal.SIGHUP)
        return 0
    except (ValueError, OSError) as exc:
        print(f"xmppd: {exc}", file=sys.stderr)
        return 1


def _server_pid(config: Config) -> int | None:
    reply = asyncio.run(admin.call(config.admin_socket, {"cmd": "status"}))
    pid = reply.get("pid") if reply else None
    return int(pid) if pid else None


def _modules() -> int:
    from xmppd.module_manager import module_name, resolve, shipped_modules

    for name in shipped_modules():
        cls = resolve(name)
        doc = ((cls.__module__ and sys.modules[cls.__module__].__doc__) or "").strip().splitlines()
        print(f"{module_name(cls)}: {doc[0] if doc else ''}")
        print(f"  xeps: {', '.join(f'XEP-{x:04d}' for x in cls.xeps) or '-'}")
        if cls.features:
            print(f"  features: {', '.join(cls.features)}")
        if cls.stores:
            print(f"  stores: {', '.join(f'{k} ({v.value})' for k, v in cls.stores.items())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
