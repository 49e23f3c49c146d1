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
SCENARIOS = ("throughput", "latency", "memory", "logins")

# (metric, higher is better) per scenario, for the summary and the ratio lines
METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "throughput": (("msg_per_s", True), ("server_us_per_msg", False)),
    "latency": (("p50_ms", False), ("p99_ms", False), ("max_ms", False)),
    "memory": (("kib_per_conn", False), ("setup_conn_per_s", True), ("server_ms_per_conn", False)),
    "logins": (("logins_per_s", True), ("server_ms_per_login", False)),
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

    @property
    def accounts(self) -> int:
        """Accounts every scenario together needs."""
        return max(2 * self.throughput_pairs, 2 * self.latency_pairs, self.idle, self.login_workers)

    def client_args(self, scenario: str) -> list[str]:
        """loadclient.py arguments for one scenario."""
        timing = ["--warmup", str(self.warmup), "--duration", str(self.duration)]
        if scenario == "throughput":
            pairs = ["--pairs", str(self.throughput_pairs), "--window", str(self.window)]
            return [scenario, *pairs, *timing]
        if scenario == "latency":
            return [scenario, "--pairs", str(self.latency_pairs), "--rate", str(self.rate), *timing]
        if scenario == "memory":
            sources = str(max(1, math.ceil(self.idle / 5000)))
            count = ["--count", str(self.idle), "--concurrency", str(self.idle_concurrency)]
            return [scenario, *count, "--sources", sources]
        if scenario == "logins":
            timing[1] = str(min(self.warmup, 1.0))
            return [scenario, "--workers", str(self.login_workers), *timing]
        raise ValueError(scenario)

    def client_timeout(self, scenario: str) -> float:
        """Hard limit on one load-client run, s."""
        if scenario == "memory":
            return 120.0 + self.idle / 20  # setup at >= 20 connections/s, or it is a failure
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
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--idle", type=int, help="idle connections for the memory scenario")
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

    def scenario(self, server: Server, scenario: str) -> dict[str, Any]:
        """Fresh server, one load-client run, its JSON result."""
        client = [sys.executable, str(HERE / "loadclient.py")]
        with server.running() as (port, pid):
            command = [*client, "--port", str(port), "--pid", str(pid), "--password", PASSWORD]
            command += self.plan.client_args(scenario)
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
        return result

    def summarise(self) -> None:
        """Ratio lines on stdout, the table on stderr."""
        by_key = {(line["server"], line["scenario"]): line for line in self.lines}
        names = [server.name for server in self.servers]
        rows = [("scenario", "metric", *names, "xmppd/prosody" if len(names) == 2 else "")]
        for scenario in self.scenarios:
            for metric, higher in METRICS[scenario]:
                values = [by_key.get((name, scenario), {}) for name in names]
                cells = [fmt(v.get(metric)) + flags(v, rate=higher) for v in values]
                ratio = ""
                if len(names) == 2 and all(v.get("ok") and v.get(metric) for v in values):
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


def headline(scenario: str, figures: dict[str, Any], ok: bool) -> str:
    """The figures worth a progress line."""
    if "error" in figures and not ok:
        return f"FAILED: {figures['error']}"
    parts = [f"{metric}={fmt(figures.get(metric))}" for metric, _ in METRICS[scenario]]
    parts += [f"{key}={figures.get(key)}" for key in ("server_cpu", "client_cpu", "other_cpu")]
    warning = (
        "  (CLIENT-BOUND: a client limit, not the server's)" if figures.get("client_bound") else ""
    )
    return ", ".join(parts) + warning + ("" if ok else "  (NOT OK)")


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
