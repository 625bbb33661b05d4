"""Scale-out: `reranker serve` replicas behind HAProxy, and a rolling restart under load.

    .venv/bin/python -m bench.scaleout                # about 2 minutes on 2 CPU cores

Starts two replicas (A and B) of `reranker serve` with their defaults on a generated model
(hidden 256, 4 layers, max length 512, as bench/burst.py) and HAProxy (Debian's `haproxy`) in
front of them, health-checking `/ready` every 200 ms. Then:
1. one replica: B is put in maintenance on the proxy (its process idles), and --clients clients
   work through --requests requests through the proxy, back to back (requests/s answered 200,
   and the CPU cores each process kept busy); 4 clients by default, as 8 put one replica past
   its 1 s queue-time limit, and the 429s they wait out would mix admission into capacity;
2. two replicas: B enabled, the same requests again;
3. a rolling restart under steady closed-loop load through the proxy (--restart-clients
   clients, 3 by default: while one replica restarts, the other carries all of them and the
   start-up takes CPU from it; at 4, one run had a 429 there): SIGTERM A, wait for its process
   to exit and the proxy to see it down, start it again on the same port, wait until /ready is
   200 and the proxy sees it up; then the same for B. Every answer is counted by status and
   every transport error by kind; 429 is a failure here, not waited out. Target: zero failures.
The proxy retries (on the other replica) only what never reached the model: a refused or reset
connection, a connection closed without an answer, and a 503 (what a draining replica answers
to a request that arrives after its SIGTERM). Request bodies are 1 query + 20 documents of
30-200 words, encoded once up front. Exit status 1 when the restart had any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from bench.burst import make_bodies
from bench.loadgen import Stats, fixed_work
from bench.servers import free_port
from bench.workload import Request

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "replicas"
CLIENT_TIMEOUT_S = 60.0
RETRY_ON = "conn-failure empty-response 503"
"""What the proxy retries on the other replica: nothing of it reached the model."""
BUFFER_BYTES = 131072
"""HAProxy's buffer: a request is retried only if it fits in one (tune.bufsize)."""

HAPROXY_CFG = """\
global
    maxconn 4096
    tune.bufsize {bufsize}
    stats socket {socket} mode 600 level admin
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    timeout queue 30s
    timeout check 2s
    # Retry only what never reached the model, on the other replica: a refused or reset
    # connection, a connection closed without an answer, a 503 from a draining replica.
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on {retry_on}

frontend rerank
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance leastconn
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 200ms fall 2 rise 2
{servers}
"""


def haproxy_config(port: int, socket_path: Path, replicas: dict[str, int],
                   retry_on: str = RETRY_ON) -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{p}" for name, p in replicas.items())
    return HAPROXY_CFG.format(bufsize=BUFFER_BYTES, socket=socket_path, port=port,
                              backend=BACKEND, servers=servers, retry_on=retry_on)


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until `check()` is true; SystemExit naming `what` after `timeout`."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


class Replica:
    """One `reranker serve` process on a fixed port, which can be drained and started again."""

    def __init__(self, name: str, model: str, port: int, flags: tuple[str, ...] = ()) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [sys.executable, "-m", "app.cli", "serve", "--model", model,
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                    "--device", "cpu", *flags]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise SystemExit(f"replica {self.name} exited with {code} before it was ready")
        try:
            return httpx.get(self.url + "/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 300) -> float:
        return _wait(f"replica {self.name}'s /ready", self.ready, timeout, interval=0.1)

    def drain(self, timeout: float = 120) -> int:
        """SIGTERM (the replica answers what it holds, then exits); its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Terminate the process if it still runs (clean-up, also after a failure)."""
        _terminate(self.proc, 60)


def _terminate(proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM a process we started (by its PID), SIGKILL if it outlives the grace period."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def find_haproxy() -> str | None:
    """The haproxy binary; Debian puts it in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


class HAProxy:
    """HAProxy in the foreground (-db), with an admin socket for its stats and maintenance."""

    def __init__(self, workdir: Path, replicas: dict[str, int], retry_on: str = RETRY_ON
                 ) -> None:
        exe = find_haproxy()
        if exe is None:
            raise SystemExit("haproxy is not installed (Debian: apt-get install haproxy)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = workdir / "haproxy.sock"
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, self.socket, replicas, retry_on))
        self.log = workdir / "haproxy.log"
        self.cmd = [exe, "-f", str(self.config), "-db"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run([*self.cmd[:3], "-c"], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"haproxy rejected {self.config}:\n{check.stdout}{check.stderr}")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait("haproxy's admin socket", self.socket.exists, 30)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` rows of the backend, by server name (BACKEND for the totals)."""
        text = self.command("show stat").lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(text.splitlines())
                if row["pxname"] == BACKEND}

    def status(self, server: str) -> str:
        return self.stats()[server]["status"]

    def wait_status(self, server: str, up: bool, timeout: float = 60) -> float:
        """Seconds until the proxy's health checks see `server` up (or down)."""
        def seen() -> bool:
            status = self.status(server)
            return status == "UP" if up else status.startswith("DOWN")

        return _wait(f"haproxy to see {server} {'up' if up else 'down'}", seen, timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def set_maintenance(self, server: str, on: bool) -> None:
        self.command(f"{'disable' if on else 'enable'} server {BACKEND}/{server}")

    def stop(self) -> None:
        _terminate(self.proc, 30)

    def abnormal_log(self) -> list[str]:
        """HAProxy's log lines for requests (only abnormal ones are logged: dontlog-normal;
        a retried request is abnormal even when it was answered 200 in the end)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if '"POST ' in line or '"GET ' in line]


@dataclass(frozen=True)
class Outcome:
    sent: float
    status: str
    """HTTP status code, or the transport error's class name."""
    latency: float


@dataclass(frozen=True)
class Step:
    replica: str
    pids: tuple[int, int]
    """The drained process's and its successor's."""
    exit_status: int
    drain_s: float
    """SIGTERM to process exit."""
    down_s: float
    """SIGTERM until it answered /ready again and the proxy saw it up."""


@dataclass
class Restart:
    outcomes: list[Outcome]
    started: float
    """perf_counter() when the load began; `Outcome.sent` counts from the same clock."""
    seconds: float
    clients: int
    steps: list[Step]
    events: list[tuple[float, str]]
    """(seconds since the load began, what happened) for each step of the restart."""
    served: dict[str, int]
    """2xx answers per replica during the phase (the proxy's counts)."""
    retries: int
    redispatches: int
    proxy_log: list[str] = field(default_factory=list)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def failures(self) -> int:
        return sum(1 for o in self.outcomes if o.status != "200")

    def latency(self, q: float) -> float:
        return Stats(latencies=[o.latency for o in self.outcomes if o.status == "200"]
                     ).percentile(q)


@dataclass
class Phase:
    """A throughput run through the proxy."""

    stats: Stats
    served: dict[str, int]
    """2xx answers per replica, by the proxy's count."""
    cores: dict[str, float]
    """CPU seconds per second of the run: per replica, the proxy, this process (the clients),
    and the whole machine (`machine`)."""


@dataclass
class Report:
    one: Phase
    two: Phase
    clients: int
    restart: Restart

    @property
    def ratio(self) -> float:
        return (self.two.stats.summary()["requests_per_s"]
                / self.one.stats.summary()["requests_per_s"])


async def _post(client: httpx.AsyncClient, body: bytes) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/rerank", content=body,
                              headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - t0
    return str(r.status_code), time.perf_counter() - t0


async def steady_load(url: str, bodies: list[bytes], clients: int,
                      stop: asyncio.Event) -> list[Outcome]:
    """`clients` clients send back to back until `stop`; every request's outcome (those in
    flight at `stop` are awaited and counted). No retries: a 429 is an answer like any other."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def loop(worker: int) -> list[Outcome]:
            out = []
            i = worker
            while not stop.is_set():
                sent = time.perf_counter()
                status, latency = await _post(client, bodies[i % len(bodies)])
                out.append(Outcome(sent, status, latency))
                i += clients
            return out

        return [o for run in await asyncio.gather(*(loop(w) for w in range(clients)))
                for o in run]


def roll(replicas: list[Replica], proxy: HAProxy, settle_s: float, t0: float,
         events: list[tuple[float, str]]) -> list[Step]:
    """The rolling restart, one replica at a time, with `settle_s` of steady load before the
    first SIGTERM and after the last replica is back; `events` get (seconds since `t0`, what)."""
    def event(what: str) -> None:
        events.append((time.perf_counter() - t0, what))

    time.sleep(settle_s)
    steps = []
    for replica in replicas:
        started = time.monotonic()
        event(f"SIGTERM {replica.name}")
        old_pid = replica.pid
        status = replica.drain()
        drain_s = time.monotonic() - started
        event(f"{replica.name} exited {status}")
        proxy.wait_status(replica.name, up=False)
        event(f"{replica.name} down on the proxy")
        replica.start()
        replica.wait_ready()
        event(f"{replica.name} ready")
        proxy.wait_status(replica.name, up=True)
        event(f"{replica.name} up on the proxy")
        steps.append(Step(replica.name, (old_pid, replica.pid), status, drain_s,
                          time.monotonic() - started))
    time.sleep(settle_s)
    return steps


async def rolling_restart(replicas: list[Replica], proxy: HAProxy, bodies: list[bytes],
                          clients: int, settle_s: float) -> Restart:
    before = proxy.stats()
    logged = len(proxy.abnormal_log())
    events: list[tuple[float, str]] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    load = asyncio.create_task(steady_load(proxy.url, bodies, clients, stop))
    try:
        steps = await asyncio.to_thread(roll, replicas, proxy, settle_s, t0, events)
    finally:
        stop.set()
        outcomes = await load
    seconds = time.perf_counter() - t0
    after = proxy.stats()

    def grew(column: str) -> int:
        return int(after["BACKEND"][column] or 0) - int(before["BACKEND"][column] or 0)

    return Restart(
        outcomes=outcomes, started=t0, seconds=seconds, clients=clients, steps=steps,
        events=events, served=served(proxy, before),
        retries=grew("wretr"), redispatches=grew("wredis"),
        proxy_log=proxy.abnormal_log()[logged:],
    )


def served(proxy: HAProxy, before: dict[str, dict[str, str]]) -> dict[str, int]:
    """2xx answers per replica since the `before` stats, by the proxy's count."""
    after = proxy.stats()
    return {name: int(row["hrsp_2xx"] or 0) - int(before[name]["hrsp_2xx"] or 0)
            for name, row in after.items() if name != "BACKEND"}


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used so far by process `pid`, or by the whole machine (all cores, not idle);
    NaN where /proc cannot tell."""
    try:
        if pid is None:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
        else:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            busy = int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")
    return busy / os.sysconf("SC_CLK_TCK")


def throughput(proxy: HAProxy, replicas: list[Replica], requests: list[Request],
               clients: int) -> Phase:
    """Fixed work through the proxy after a short warm-up, by clients that wait out a 429 as
    told (refusals are counted in the Stats)."""
    asyncio.run(fixed_work(proxy.url, "/v1/rerank", requests[: 2 * clients],
                           concurrency=clients, retry=True))
    pids = {r.name: r.pid for r in replicas} | {"proxy": proxy.pid, "clients": os.getpid()}
    before, cpu0, t0 = proxy.stats(), {k: cpu_seconds(p) for k, p in pids.items()}, time.time()
    machine0 = cpu_seconds()
    stats = asyncio.run(fixed_work(proxy.url, "/v1/rerank", requests, concurrency=clients,
                                   retry=True))
    wall = time.time() - t0
    cores = {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
    cores["machine"] = (cpu_seconds() - machine0) / wall
    return Phase(stats, served(proxy, before), cores)


def run(model: str, *, clients: int = 4, requests: int = 200, restart_clients: int = 3,
        settle_s: float = 5.0, flags: tuple[str, ...] = (), retry_on: str = RETRY_ON
        ) -> Report:
    """All three phases; every process started here is stopped before this returns."""
    bodies = make_bodies(max(requests, 50), seed=5)
    if max(map(len, bodies)) + 4096 > BUFFER_BYTES:
        raise SystemExit(f"a request body does not fit HAProxy's {BUFFER_BYTES}-byte buffer, "
                         "so it could not be retried: raise BUFFER_BYTES")
    work = [Request(d["query"], d["documents"]) for d in map(orjson.loads, bodies[:requests])]
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        replicas = [Replica(name, model, free_port(), flags) for name in ("a", "b")]
        proxy = HAProxy(Path(tmp), {r.name: int(r.url.rsplit(":", 1)[1]) for r in replicas},
                        retry_on)
        try:
            for replica in replicas:
                replica.start()
            proxy.start()
            for replica in replicas:
                replica.wait_ready()
                proxy.wait_status(replica.name, up=True)

            proxy.set_maintenance("b", True)
            one = throughput(proxy, replicas, work, clients)
            proxy.set_maintenance("b", False)
            proxy.wait_status("b", up=True)
            two = throughput(proxy, replicas, work, clients)
            restart = asyncio.run(rolling_restart(replicas, proxy, bodies, restart_clients,
                                                  settle_s))
        finally:
            for replica in replicas:
                replica.stop()
            proxy.stop()
    return Report(one, two, clients, restart)


def _line(label: str, phase: Phase, clients: int) -> str:
    stats = phase.stats
    s = stats.summary()
    cores = ", ".join(f"{k} {v:.2f}" for k, v in phase.cores.items())
    return (f"{label}: {s['requests_per_s']:.2f} req/s ({clients} clients, {len(stats.latencies)}"
            f" requests in {stats.seconds:.1f} s; statuses {dict(stats.statuses)}, 429s waited"
            f" out {stats.refusals}; by replica {phase.served}); latency p50 {s['p50_ms']:.0f} ms,"
            f" p99 {s['p99_ms']:.0f} ms\n  CPU cores busy: {cores}")


def format_report(report: Report) -> str:
    r = report.restart
    errors = {k: v for k, v in r.statuses.items() if not k.isdigit()}
    lines = [
        _line("one replica ", report.one, report.clients),
        _line("two replicas", report.two, report.clients),
        f"two / one: {report.ratio:.2f}x",
        f"rolling restart: {len(r.outcomes)} requests in {r.seconds:.1f} s"
        f" ({r.clients} clients, {sum(o.status == '200' for o in r.outcomes) / r.seconds:.2f}"
        f" req/s answered 200); statuses {dict(r.statuses)}; transport errors"
        f" {sum(errors.values())} {errors or ''}".rstrip(),
        f"restart latency (200s): p50 {1000 * r.latency(0.5):.0f} ms, p99"
        f" {1000 * r.latency(0.99):.0f} ms, max {1000 * r.latency(1.0):.0f} ms",
        "restart steps: " + "; ".join(
            f"{s.replica}: exit {s.exit_status} {s.drain_s:.1f} s after SIGTERM, back up"
            f" {s.down_s:.1f} s after SIGTERM" for s in r.steps),
        f"proxy: 2xx by replica {r.served}; retries {r.retries}, redispatches"
        f" {r.redispatches}; abnormal requests logged {len(r.proxy_log)}",
        f"failed requests during the restart: {r.failures} (target 0)",
    ]
    lines += [f"  failed: {o.sent - r.started:.2f} s {o.status} after {1000 * o.latency:.0f} ms"
              for o in r.outcomes if o.status != "200"][:20]
    lines += [f"  at {t:.2f} s: {what}" for t, what in r.events]
    lines += [f"  haproxy: {line}" for line in r.proxy_log[:20]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="default: a small model generated in a temporary directory")
    parser.add_argument("--clients", type=int, default=4, help="clients, throughput phases")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests in each throughput phase (the same ones for both)")
    parser.add_argument("--restart-clients", type=int, default=3,
                        help="clients of the steady load during the rolling restart")
    parser.add_argument("--settle-seconds", type=float, default=5.0,
                        help="steady load before the first SIGTERM and after the last restart")
    parser.add_argument("--retry-on", default=RETRY_ON,
                        help="HAProxy's retry-on (\"conn-failure\" is its default: shows what the"
                        " 503 retry saves)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from app.testmodel import write_test_model

            model = write_test_model(Path(tmp) / "small", max_length=512, hidden=256, layers=4)
        print(f"{os.cpu_count()} CPUs; haproxy {find_haproxy()}", flush=True)
        report = run(str(model), clients=args.clients, requests=args.requests,
                     restart_clients=args.restart_clients, settle_s=args.settle_seconds,
                     retry_on=args.retry_on)
    print(format_report(report))
    return 1 if report.restart.failures else 0


if __name__ == "__main__":
    sys.exit(main())
