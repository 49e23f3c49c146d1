"""xmppbench: xmppd and Prosody side by side, same run, same load client, same machine.

For every scenario and every server: start a fresh server pinned to CPU 0, run ``loadclient.py``
pinned to CPU 1, collect its JSON result, stop the server. Prints one JSON line per scenario per
server and one per ratio (xmppd/prosody) on stdout, a summary table on stderr, and saves the lines
to ``bench/results/<timestamp>.jsonl``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from loadclient import check, ratio
from servers import (
    SERVERS,
    BenchError,
    ProsodyServer,
    Server,
    git_revision,
    pinned,
    spawn,
    stop,
)

logger = logging.getLogger("xmppbench")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLIENT_CPU = "1"
PASSWORD = "bench-password"
SCENARIOS = (
    "throughput",
    "latency",
    "memory",
    "logins",
    "afterload",
    "slowreader",
    "throughput_plain",
    "throughput_durable",
    "latency_durable",
    "muc",
    "hold",
)
# hold (N connections held --hold seconds, 5 minutes by default) runs only when named
DEFAULT_SCENARIOS = SCENARIOS[:-1]
# Durability (issue 5): the same 1:1 throughput with stream management and the archive off
# (plain) and on (durable: clients enable XEP-0198 and ask for an ack after every message, as
# Conversations does; every message is archived);
# latency_durable offers half of the saturated rate of its own unbatched traffic (see
# Run.scenario).
PROFILES = {
    "throughput_plain": "plain",
    "throughput_durable": "durable",
    "latency_durable": "durable",
    "muc": "muc",
}
CONNECTIONS_PER_SOURCE = 2000  # idle connections per loopback source address (127.0.0.2, ...)

# (metric, higher is better) per scenario, for the summary and the ratio lines;
# None: a figure shown side by side, with no better direction and no ratio
METRICS: dict[str, tuple[tuple[str, bool | None], ...]] = {
    "throughput": (("msg_per_s", True), ("server_us_per_msg", False)),
    "latency": (("p50_ms", False), ("p99_ms", False), ("max_ms", False)),
    "throughput_plain": (("msg_per_s", True), ("server_us_per_msg", False)),
    "throughput_durable": (
        ("msg_per_s", True),
        ("server_us_per_msg", False),
        ("durable_plain_ratio", True),
    ),
    "latency_durable": (("rate", None), ("p50_ms", False), ("p99_ms", False), ("max_ms", False)),
    "muc": (
        ("delivered_per_s", True),
        ("room_msg_per_s", True),
        ("server_us_per_delivery", False),
    ),
    "memory": (
        ("kib_per_conn", False),
        ("setup_conn_per_s", True),
        ("server_ms_per_conn", False),
        ("rss_close_ratio", False),
        ("rss_reclaim_ratio", False),
        ("reclaim_s", None),
    ),
    "logins": (("logins_per_s", True), ("server_ms_per_login", False)),
    "afterload": (
        ("fresh_msg_per_s", True),
        ("after_msg_per_s", True),
        ("after_fresh_ratio", True),
        ("storm_kib_per_conn", False),
        ("rss_close_ratio", False),
        ("rss_reclaim_ratio", False),
        ("reclaim_s", None),
    ),
    "slowreader": (
        ("rtt_p50_ms", False),
        ("rtt_p99_ms", False),
        ("rtt_max_ms", False),
        ("rss_growth_mib", False),
        ("flood_mb", None),
        ("flood_stalled_s", None),
        ("reader_closed_at_s", None),
    ),
    "hold": (
        ("established", True),
        ("setup_conn_per_s", True),
        ("kib_per_conn", False),
        ("kib_per_conn_held", False),
        ("pings_answered", True),
        ("ping_all_s", False),
        ("rss_close_ratio", False),
        ("rss_reclaim_ratio", False),
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run."""

    duration: float = 10.0
    warmup: float = 2.0
    throughput_pairs: int = 200
    window: int = 50
    latency_pairs: int = 50
    rate: int = 2000
    idle: int = 10_000
    idle_concurrency: int = 200
    login_workers: int = 48
    hold: float = 300.0
    flood: float = 10.0
    flood_bytes: int = 200_000_000
    # R stays unread ~36 s in all: longer than xmppd's slow_reader_timeout (30 s by default)
    linger: float = 25.0
    occupants: int = 100
    muc_senders: int = 10
    muc_window: int = 20

    @property
    def accounts(self) -> int:
        """Accounts every scenario together needs."""
        return max(
            2 * self.throughput_pairs,
            2 * self.latency_pairs,
            self.idle,
            self.login_workers,
            self.occupants,
            3,
        )

    def _idle_args(self) -> list[str]:
        sources = max(1, math.ceil(self.idle / CONNECTIONS_PER_SOURCE))
        return ["--count", str(self.idle), "--sources", str(sources)]

    def client_args(self, scenario: str, rate: int | None = None) -> list[str]:
        """loadclient.py arguments for one scenario (`rate`: latency_durable's offered rate)."""
        timing = ["--warmup", str(self.warmup), "--duration", str(self.duration)]
        if scenario in ("throughput", "throughput_plain", "throughput_durable"):
            pairs = ["--pairs", str(self.throughput_pairs), "--window", str(self.window)]
            sm = ["--sm"] if scenario == "throughput_durable" else []
            return ["throughput", *pairs, *timing, *sm]
        if scenario == "latency":
            return [scenario, "--pairs", str(self.latency_pairs), "--rate", str(self.rate), *timing]
        if scenario == "latency_durable":
            offered = str(rate or self.rate)
            pairs = ["--pairs", str(self.latency_pairs)]
            return ["latency", *pairs, "--rate", offered, *timing, "--sm"]
        if scenario in ("memory", "hold"):
            hold = ["--hold", str(self.hold if scenario == "hold" else 0.0)]
            return [
                scenario,
                *self._idle_args(),
                "--concurrency",
                str(self.idle_concurrency),
                *hold,
            ]
        if scenario == "logins":
            timing[1] = str(min(self.warmup, 1.0))
            return [scenario, "--workers", str(self.login_workers), *timing]
        if scenario == "afterload":
            pairs = ["--pairs", str(self.throughput_pairs), "--window", str(self.window)]
            storm = [*self._idle_args(), "--storm-concurrency", str(self.idle_concurrency)]
            return [scenario, *pairs, *timing, *storm]
        if scenario == "muc":
            room = ["--occupants", str(self.occupants), "--senders", str(self.muc_senders)]
            return [scenario, *room, "--window", str(self.muc_window), *timing]
        if scenario == "slowreader":
            flood = ["--duration", str(self.flood), "--bytes", str(self.flood_bytes)]
            return [scenario, *flood, "--linger", str(self.linger)]
        raise ValueError(scenario)

    def client_timeout(self, scenario: str) -> float:
        """Hard limit on one load-client run, s."""
        # idle connections are set up at >= 20 per second, or it is a failure; pinging and
        # closing them has its own bounded waits (about 3 minutes at most)
        storm = self.idle / 20 + 240.0
        if scenario == "memory":
            return 120.0 + storm + 45.0  # + the wait for RSS to return
        if scenario == "hold":
            return 120.0 + storm + self.hold + 45.0
        if scenario == "afterload":
            return 165.0 + storm + 2 * (120.0 + 2 * (self.warmup + self.duration))
        if scenario == "slowreader":
            return 180.0 + self.flood + self.linger
        return 120.0 + 2 * (self.warmup + self.duration)


QUICK = Plan(
    duration=2.0,
    warmup=0.5,
    throughput_pairs=20,
    latency_pairs=10,
    rate=500,
    idle=300,
    idle_concurrency=50,
    login_workers=16,
    hold=5.0,
    flood=3.0,
    flood_bytes=50_000_000,
    linger=2.0,
    occupants=20,
    muc_senders=4,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description="Benchmark xmppd against Prosody.")
    parser.add_argument(
        "--server",
        choices=("xmppd", "prosody", "both", "null"),
        default="both",
        help="null: a byte relay (bench/nullserver.py) that shows the load client's ceiling",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but hold)",
    )
    parser.add_argument(
        "--idle", type=int, help="idle connections: memory, hold and afterload's storm"
    )
    parser.add_argument(
        "--hold", type=float, help="seconds the hold scenario keeps them (default 300)"
    )
    parser.add_argument("--duration", type=float, help="measured seconds per timed scenario")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--prosody-gc",
        choices=("incremental", "generational"),
        default="incremental",
        help="Prosody's Lua GC mode (default: Prosody's own default, incremental)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary server dirs")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


class Run:
    """One benchmark run: servers, their work dirs, the result lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        plan = QUICK if args.quick else Plan()
        if args.idle is not None:
            plan = dataclasses.replace(plan, idle=args.idle)
        if args.duration is not None:
            plan = dataclasses.replace(plan, duration=args.duration)
        if args.hold is not None:
            plan = dataclasses.replace(plan, hold=args.hold)
        self.plan = plan
        self.scenarios: list[str] = args.scenarios
        names = ["xmppd", "prosody"] if args.server == "both" else [args.server]
        self.workroot = Path(tempfile.mkdtemp(prefix="xmppbench-"))
        self.servers: list[Server] = []
        for name in names:
            (self.workroot / name).mkdir()
            server = SERVERS[name](self.workroot / name)
            if isinstance(server, ProsodyServer):
                server.gc_mode = args.prosody_gc
            self.servers.append(server)
        self.broken: dict[str, str] = {}
        self.lines: list[dict[str, Any]] = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        RESULTS.mkdir(exist_ok=True)
        self.results = RESULTS / f"{stamp}.jsonl"
        self._write(
            {
                "run": stamp,
                "quick": args.quick,
                "plan": dataclasses.asdict(plan),
                "scenarios": self.scenarios,
                "git": git_revision(),
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
            }
        )

    def _write(self, line: dict[str, Any]) -> None:
        with self.results.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def emit(self, line: dict[str, Any]) -> None:
        """Print one result line on stdout and save it."""
        self.lines.append(line)
        print(json.dumps(line), flush=True)
        self._write(line)

    def prepare(self) -> None:
        """Config, certificates and accounts for every server; failures are remembered."""
        names = [f"bench{i}" for i in range(self.plan.accounts)]
        for server in self.servers:
            began = time.monotonic()
            note(f"{server.name}: preparing {len(names)} accounts in {server.workdir}")
            try:
                server.prepare(names, PASSWORD)
            except BenchError as exc:
                self.broken[server.name] = str(exc)
                note(f"{server.name}: NOT AVAILABLE: {exc}")
            else:
                note(f"{server.name} {server.version}: ready in {time.monotonic() - began:.1f}s")

    def run(self) -> None:
        """Every scenario against every server, interleaved so drift hits both alike."""
        for scenario in self.scenarios:
            for server in self.servers:
                head = {"server": server.name, "scenario": scenario}
                if server.name in self.broken:
                    self.emit(head | {"ok": False, "error": self.broken[server.name]})
                    continue
                note(f"{server.name}: {scenario} ...")
                try:
                    figures = self.scenario(server, scenario)
                except BenchError as exc:
                    figures = {"ok": False, "error": str(exc)}
                ok = bool(figures.pop("ok", False))
                figures.pop("scenario", None)
                self.emit(head | figures | {"version": server.version, "ok": ok})
                note(f"{server.name}: {scenario}: {headline(scenario, figures, ok)}")

    def _figure(self, server: str, scenario: str, metric: str) -> float | None:
        for line in self.lines:
            if line.get("server") == server and line.get("scenario") == scenario and line["ok"]:
                value = line.get(metric)
                return float(value) if isinstance(value, int | float) else None
        return None

    def scenario(self, server: Server, scenario: str) -> dict[str, Any]:
        """Fresh server, one load-client run, its JSON result."""
        client = [sys.executable, str(HERE / "loadclient.py")]
        server.profile = PROFILES.get(scenario, "default")
        rate = None
        if scenario == "latency_durable":
            # Half the durable saturated rate, but of this scenario's own traffic shape: one
            # message (and one <r/>) per TLS record, which costs about 2.5 times a message of
            # the windowed throughput run (xmppd saturates near 6,000 msg/s with it, against
            # ~16,000 windowed). So: a fifth of the windowed durable rate.
            saturated = self._figure(server.name, "throughput_durable", "msg_per_s")
            rate = int(saturated / 5) if saturated else None
        with server.running() as (port, pid):
            command = [*client, "--port", str(port), "--pid", str(pid), "--password", PASSWORD]
            command += self.plan.client_args(scenario, rate)
            process = spawn(pinned(CLIENT_CPU, command), stdout=subprocess.PIPE, stderr=None)
            try:
                out, _ = process.communicate(timeout=self.plan.client_timeout(scenario))
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"load client gave no result within {exc.timeout:.0f}s") from exc
            finally:
                stop(process, grace=5.0)
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise BenchError(f"load client failed (status {process.returncode})") from exc
        if scenario == "throughput_durable":
            plain = self._figure(server.name, "throughput_plain", "msg_per_s")
            result["durable_plain_ratio"] = ratio(result.get("msg_per_s"), plain)
            durable = result["durable_plain_ratio"]
            result["checks"] = [check("durable_plain_ratio", durable, ">=", 0.8)]
        if scenario == "latency_durable":
            result["checks"] = [check("p99_ms", result.get("p99_ms"), "<", 20.0)]
        return result

    def summarise(self) -> None:
        """Ratio lines on stdout, the table on stderr."""
        by_key = {(line["server"], line["scenario"]): line for line in self.lines}
        names = [server.name for server in self.servers]
        rows = [("scenario", "metric", *names, "xmppd/prosody" if len(names) == 2 else "")]
        for scenario in self.scenarios:
            for metric, higher in METRICS[scenario]:
                values = [by_key.get((name, scenario), {}) for name in names]
                cells = [
                    fmt(v.get(metric)) + flags(v, rate=metric.endswith("_per_s")) for v in values
                ]
                ratio = ""
                if (
                    len(names) == 2
                    and higher is not None
                    and all(v.get("ok") and v.get(metric) for v in values)
                ):
                    value = values[0][metric] / values[1][metric]
                    ratio = f"{value:.2f} ({'higher' if higher else 'lower'} is better)"
                    self.emit(
                        {
                            "ratio": "xmppd/prosody",
                            "scenario": scenario,
                            "metric": metric,
                            "value": round(value, 3),
                            "higher_is_better": higher,
                        }
                    )
                rows.append((scenario, metric, *cells, ratio))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print(file=sys.stderr)
        for row in rows:
            print(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)),
                file=sys.stderr,
            )
        verdicts = [
            f"  {line['scenario']:<11} {line['server']:<8} {verdict(line)}"
            for line in self.lines
            if "checks" in line
        ]
        if verdicts:
            print("\ntargets (they do not change the exit status):", file=sys.stderr)
            print("\n".join(verdicts), file=sys.stderr)
        print(f"\nsaved: {self.results}", file=sys.stderr)

    def cleanup(self, keep: bool) -> None:
        """Remove the temporary server dirs (servers are already stopped)."""
        if keep:
            note(f"kept {self.workroot}")
        else:
            shutil.rmtree(self.workroot, ignore_errors=True)


def fmt(value: object) -> str:
    """A figure for the table."""
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def flags(line: dict[str, Any], *, rate: bool) -> str:
    """Table annotations: failed runs, and rates that show the client's limit."""
    if not line.get("ok"):
        return " (failed)"
    return " (client-bound)" if rate and line.get("client_bound") else ""


def verdict(line: dict[str, Any]) -> str:
    """The issue's targets for one result: met, or which were missed and by how much."""
    checks = line.get("checks") or []
    missed = [f"{name} (was {fmt(value)})" for name, value, met in checks if not met]
    if missed:
        return "MISSED: " + "; ".join(missed)
    return "met: " + "; ".join(f"{name} ({fmt(value)})" for name, value, _ in checks)


def headline(scenario: str, figures: dict[str, Any], ok: bool) -> str:
    """The figures worth a progress line."""
    if "error" in figures and not ok:
        return f"FAILED: {figures['error']}"
    parts = [f"{metric}={fmt(figures.get(metric))}" for metric, _ in METRICS[scenario]]
    parts += [f"{key}={figures.get(key)}" for key in ("server_cpu", "client_cpu", "other_cpu")]
    warning = (
        "  (CLIENT-BOUND: a client limit, not the server's)" if figures.get("client_bound") else ""
    )
    target = f"  [targets {verdict(figures)}]" if "checks" in figures else ""
    return ", ".join(parts) + warning + ("" if ok else "  (NOT OK)") + target


def note(text: str) -> None:
    """Progress on stderr, so stdout stays JSON lines."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when every scenario reported ok."""
    args = parse_args(argv)
    # also SIGINT: a shell without job control starts background jobs with SIGINT ignored
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        note("warning: fewer than 2 CPUs or no taskset: server and client are not pinned")
    run = Run(args)
    try:
        run.prepare()
        run.run()
        run.summarise()
    except KeyboardInterrupt:
        note("interrupted: servers stopped")
        return 130
    finally:
        run.cleanup(args.keep)
    return 0 if all(line.get("ok", True) for line in run.lines) else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
