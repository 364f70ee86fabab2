#!/usr/bin/env python3
"""Benchmarks of redis-writebehind, each side by side with its baseline in one run.

Run through `scripts/bench` (which builds everything first); this file only measures. Python stdlib
only: the load comes from `redis-benchmark` (C) or from the module itself, so the driver's own speed
never limits a figure; Python starts and stops the servers, paces the light-load writer, polls the
consumer group and talks to the emulator's control API.

Items (see docs/performance.md for what each means and its target):
  1 xadd       XADD throughput, same redis-server with / without the module (and with it paused)
  1+ foreground  the module's cost to Redis's clients: XADD ratio saturated (redis-benchmark) and at half
               load (an open loop at a fixed rate that keeps the main thread half busy without the
               module: examples/xadd_load.rs), p99 XADD latency at half load (also with the sink at
               the lowest CPU priority, and with the CPUs apart: Redis's main thread and the load on
               one CPU, the module's threads and the sink on another), CPU us per drained record by
               thread, main-thread time taken per drained record, the group's lag over each run
  2 drain      records/s from a pre-filled stream to the emulator's fast sink, 1/2/4 workers (`--workers`);
               `--baseline-module` interleaves a second build for a before/after, `--profile` records perf
  3 e2e        10,000 records over 500 users into the emulator's real SQL engine: wall time, round trips
  3' sidecar   30,000 entries drained by the module and by a batched Python sidecar, on the real engine
               and on the fast sink, in one run: ratios, statements per 10,000 records
  4 latency    XADD -> committed (acknowledged) at 100 entries/s, p50/p99
  5 memory     used_memory with a 1,000,000-entry backlog and Snowflake unreachable, with / without module
  6 restore    2,000 rows restored from the emulator; wb-migrate loading 10,000 records from a dump
  7 mappings   hash changes written by a mapping beside userdata records, from a paused backlog
  8 cluster    drain records/s to the fast sink: one stream against 12 shard streams (STREAM_SHARDS) on
               3 primaries; 12 shard streams on 1 primary pinned to a core against 2 primaries pinned
               to a core each

Every server runs on a free 127.0.0.1 port in a temporary directory and is stopped by PID; all of it
is removed on exit, also on Ctrl+C.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import resource
import time
import urllib.request
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT, USER, DATABASE, SCHEMA = "BENCH", "WRITER", "WRITEBEHIND", "PUBLIC"
STREAM, GROUP = "userdata-stream", "snowflake-writer"
FLOOR_GROUP = "group-floor"
LASTPLUS = "2025-11-03 12:00:00"

# A realistic one-record batch as the application writes it. redis-benchmark replaces each
# __rand_int__ with a random number below -r, so entries spread over that many users and items.
BENCH_PAYLOAD = json.dumps(
    {
        "key": "userdata-events:user__rand_int__-1/visited",
        "records": [
            {
                "id": "user__rand_int__-1",
                "page_name": "search",
                "query_row_count": "5",
                "track_id": "t__rand_int__",
                "track_title": "Quarterly revenue by region",
                "track_type": "query",
                "track_url": "/search?q=quarterly+revenue+by+region",
                "lastplus": LASTPLUS,
                "action": "v",
            }
        ],
    },
    separators=(",", ":"),
)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []
_workdir: str | None = None
# Lines added to every server's configuration (`--redis-conf`).
_redis_conf: list[str] = []


def spawn(args: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(args, **kw)
    _children.append(p)
    return p


def run_to_end(args: list[str], timeout: float, **kw) -> tuple[int, str, str]:
    """Runs a tool to its end (killed after `timeout` seconds); its exit code, stdout and stderr."""
    p = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        _children.remove(p)
    return p.returncode, out, err


def stop(p: subprocess.Popen, within: float = 15.0) -> None:
    """SIGTERM and wait; SIGKILL after `within` seconds."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=within)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _children:
        _children.remove(p)


def cleanup() -> None:
    for p in list(_children):
        stop(p, within=5.0)
    if _workdir and os.path.isdir(_workdir):
        shutil.rmtree(_workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (threads of one name summed, e.g. the workers), to
    the nanosecond from the scheduler's own account (`schedstat`); from `stat`'s clock ticks (10 ms)
    where the kernel keeps no such account."""
    out: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        name = name.rstrip("0123456789-") or name  # wb-worker-0, wb-worker-1 -> wb-worker
        fields = rest.split()
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                seconds = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            seconds = (int(fields[11]) + int(fields[12])) / ticks
        out[name] = out.get(name, 0.0) + seconds
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 4) for k, v in sorted(after.items()) if v - before.get(k, 0.0) >= 0.0005}


def wait_until(what: str, within: float, check, every: float = 0.02):
    deadline = time.monotonic() + within
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(every)


# --- a minimal RESP2 client -------------------------------------------------------------------------


class RedisError(Exception):
    pass


def encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Conn:
    def __init__(self, port: int, timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2].decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError(f"unexpected reply {line[:40]!r}")

    def call(self, *args):
        self.sock.sendall(encode(args))
        r = self._read()
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, commands, chunk: int = 2000) -> list:
        replies = []
        for i in range(0, len(commands), chunk):
            part = commands[i : i + chunk]
            self.sock.sendall(b"".join(encode(c) for c in part))
            replies.extend(self._read() for _ in part)
        for r in replies:
            if isinstance(r, RedisError):
                raise r
        return replies

    def status(self) -> dict:
        flat = self.call("WB.STATUS")
        return dict(zip(flat[0::2], flat[1::2]))

    def info(self, section: str) -> dict:
        out = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


# --- the servers ------------------------------------------------------------------------------------


class Tools:
    def __init__(self, redis_server: str, module: str, python: str, migrate: str, xadd_load: str):
        self.redis_server = redis_server
        self.bin_dir = os.path.dirname(redis_server)
        self.redis_benchmark = os.path.join(self.bin_dir, "redis-benchmark")
        self.module = module
        self.python = python
        self.migrate = migrate
        # The open-loop XADD load at a fixed rate (examples/xadd_load.rs).
        self.xadd_load = xadd_load
        # The least consumer-group drain (examples/group_floor.rs), built beside it.
        self.group_floor = os.path.join(os.path.dirname(xadd_load), "group_floor")


def pinned(cpus: set[int] | None):
    """A `preexec_fn` that keeps a child (every thread it starts) to `cpus`; `None` when not given."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Emulator:
    """The Snowflake SQL API emulator: `sink=True` counts statements without executing them."""

    def __init__(self, tools: Tools, keys: str, sink: bool, nice: bool = False, token_file: str | None = None,
                 cpus: set[int] | None = None):
        self.dir = tempfile.mkdtemp(prefix="emulator-", dir=_workdir)
        port_file = os.path.join(self.dir, "port")
        args = (["nice", "-n", "19"] if nice else []) + [tools.python, os.path.join(REPO, "scripts/emulator/server.py"),
                "--host", "127.0.0.1", "--port", "0", "--port-file", port_file, "--control",
                "--account", ACCOUNT, "--user", USER, "--database", DATABASE, "--schema", SCHEMA,
                "--public-key", os.path.join(keys, "rsa_key.pub")]
        if token_file:
            args += ["--token-file", token_file]
        if sink:
            args.append("--sink")
        else:
            args += ["--db-path", os.path.join(self.dir, "db"),
                     "--schema-sql", os.path.join(REPO, "scripts/snowflake/schema.sql")]
        self.log_path = os.path.join(self.dir, "emulator.log")
        logf = open(self.log_path, "w")
        env = dict(os.environ, TMPDIR=self.dir)
        self.proc = spawn(args, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
                          preexec_fn=pinned(cpus))

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the emulator exited; log:\n{open(self.log_path).read()[-3000:]}")
            return os.path.exists(port_file) and open(port_file).read().strip()

        self.port = int(wait_until("the emulator", 120, ready, every=0.1))
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _control(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read() or b"null")

    def stats(self) -> dict:
        return self._control("GET", "/_emulator/stats")

    def reset(self) -> None:
        self._control("POST", "/_emulator/reset", {})

    def sql(self, sql: str) -> list:
        return self._control("POST", "/_emulator/sql", {"sql": sql})["rows"]

    def stop(self) -> None:
        stop(self.proc)


class Redis:
    """A redis-server 8, with or without the module, configured from the environment like production."""

    def __init__(self, tools: Tools, module: bool, env: dict | None = None, port: int | None = None,
                 conf_extra: list[str] | None = None, cpus: set[int] | None = None,
                 module_path: str | None = None):
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=_workdir)
        self.port = port or free_port()
        conf = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
                f"logfile {os.path.join(self.dir, 'redis.log')}", 'save ""', "appendonly no",
                "enable-module-command yes"] + _redis_conf + (conf_extra or [])
        if module:
            conf.append(f"loadmodule {module_path or tools.module}")
        conf_path = os.path.join(self.dir, "redis.conf")
        with open(conf_path, "w") as f:
            f.write("\n".join(conf) + "\n")
        # A clean environment: nothing from the caller's shell changes the module's settings.
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        # Pinned to `cpus` (every thread of it, the module's included), when given.
        self.proc = spawn([tools.redis_server, conf_path], env={**base, **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(cpus))

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; log:\n{self.log()[-3000:]}")
            try:
                c = Conn(self.port, timeout=2)
                ok = c.call("PING") == "PONG"
                c.close()
                return ok
            except (OSError, RedisError):
                return False

        wait_until("redis-server", 30, ready)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def conn(self, timeout: float = 60.0) -> Conn:
        return Conn(self.port, timeout)

    def aof_bytes(self) -> int:
        """The size of the append-only files (0 with the AOF off)."""
        total = 0
        for root, _dirs, files in os.walk(self.dir):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if ".aof" in f)
        return total

    def log(self) -> str:
        try:
            return open(os.path.join(self.dir, "redis.log")).read()
        except OSError:
            return ""

    def stop(self) -> None:
        stop(self.proc, within=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def module_env(snowflake_url: str, keys: str, **extra) -> dict:
    env = {
        "SNOWFLAKE_URL": snowflake_url,
        "SNOWFLAKE_ACCOUNT": ACCOUNT,
        "SNOWFLAKE_USER": USER,
        "SNOWFLAKE_PRIVATE_KEY_PATH": os.path.join(keys, "rsa_key.p8"),
        "SNOWFLAKE_DATABASE": DATABASE,
        "SNOWFLAKE_SCHEMA": SCHEMA,
        "SNOWFLAKE_WAREHOUSE": "BENCH_WH",
        # The benchmark payloads carry a fixed lastplus; every record is written, none skipped as stale.
        "SKIP_FRESHNESS": "1",
        "RESTORE_ON_EMPTY": "0",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def redis_benchmark(tools: Tools, port: int, n: int, clients: int, pipeline: int, users: int) -> float:
    """Pipelined XADDs of BENCH_PAYLOAD; returns requests per second."""
    return redis_benchmark_csv(tools, port, n, clients, pipeline, users)["rps"]


def redis_benchmark_csv(tools: Tools, port: int, n: int, clients: int, pipeline: int, users: int) -> dict:
    """Pipelined XADDs of BENCH_PAYLOAD; returns requests per second and the latency percentiles (ms)
    redis-benchmark reports (each request's time, a pipeline's requests all counting its round trip)."""
    args = [tools.redis_benchmark, "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-c", str(clients),
            "-P", str(pipeline), "-r", str(users), "--csv", "XADD", STREAM, "*", "value", BENCH_PAYLOAD]
    code, out, err = run_to_end(args, 900)
    if code != 0:
        raise RuntimeError(f"redis-benchmark failed: {err.strip()}")
    last = [line for line in out.splitlines() if line.strip()][-1]
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",
    # "max_latency_ms", where the test name itself holds commas and quotes.
    fields = [f.strip('"') for f in last.rsplit(",", 7)[1:]]
    names = ["rps", "avg_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    return {k: float(v) for k, v in zip(names, fields)}


def xadd_load(tools: Tools, port: int, rate: float, seconds: float, users: int,
              cpus: set[int] | None = None) -> dict:
    """XADDs of BENCH_PAYLOAD at a fixed `rate` for `seconds` (an open loop: commands are sent when
    due, whatever the server does); returns the rate answered and the latency percentiles (ms), each
    command's latency counted from when it was due. Kept to `cpus`, when given."""
    args = [tools.xadd_load, "--port", str(port), "--rate", str(round(rate)), "--seconds", str(seconds),
            "--users", str(users), "--stream", STREAM, "--payload", BENCH_PAYLOAD]
    _, out, err = run_to_end(args, seconds + 120, preexec_fn=pinned(cpus))
    if not out.strip():
        raise RuntimeError(f"xadd_load failed: {err.strip()}")
    res = json.loads(out.strip().splitlines()[-1])
    return {"rps": res["answered_per_s"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
            "p999_ms": res["p999_ms"], "answered_all": res["answered"] == res["sent"]}


def floor_group(con: Conn) -> dict | None:
    """The group examples/group_floor.rs reads with, as `XINFO GROUPS` shows it (None before it exists)."""
    try:
        groups = con.call("XINFO", "GROUPS", STREAM)
    except RedisError:
        return None
    for g in groups:
        info = dict(zip(g[0::2], g[1::2]))
        if info.get("name") == FLOOR_GROUP:
            return info
    return None


def beside_group_floor(tools: Tools, port: int, seconds: float, load, cpus: set[int] | None = None) -> dict:
    """`load()` while the least consumer-group drain (examples/group_floor.rs: XREADGROUP and XACK,
    nothing else) reads and acknowledges what it adds, kept to `cpus` when given. The load's figures,
    with, under `beside`, the entries acknowledged and those left unread or unacknowledged at its end."""
    p = spawn([tools.group_floor, "--port", str(port), "--seconds", str(seconds), "--stream", STREAM,
               "--group", FLOOR_GROUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
              preexec_fn=pinned(cpus))
    con = Conn(port)
    try:
        wait_until("the group of examples/group_floor", 10, lambda: floor_group(con))
        res = load()
        out, err = p.communicate(timeout=seconds + 30)
        if p.returncode != 0:
            raise RuntimeError(f"group_floor failed: {err.strip()}")
        info = floor_group(con) or {}
        left = int(info.get("pending", 0)) + int(info.get("lag") or 0)
        return {**res, "beside": {"floor_acked": json.loads(out)["acked"], "floor_left": left}}
    finally:
        con.close()
        stop(p)


# A plain CPU load: `burst` seconds of spinning every `period` seconds.
CPU_LOAD = """import sys, time
burst, period = float(sys.argv[1]), float(sys.argv[2])
while True:
    end = time.perf_counter() + burst
    while time.perf_counter() < end:
        pass
    time.sleep(max(period - burst, 0.0))
"""


def beside_cpu_load(tools: Tools, burst_s: float, period_s: float, load) -> dict:
    """`load()` beside a plain CPU load of `burst_s` seconds every `period_s`."""
    p = spawn([tools.python, "-c", CPU_LOAD, str(burst_s), str(period_s)])
    try:
        return load()
    finally:
        stop(p)


def warm_up_machine(tools: Tools, cfg) -> None:
    """One saturating run, not counted, before an item's measured ones: on this shared VM the first
    run of a session came out 30-45 % slower than the rest, module or not (seen four times on
    2026-12-04: 312,000-372,000 XADD/s against 520,000-860,000 right after)."""
    r = Redis(tools, False)
    try:
        redis_benchmark(tools, r.port, cfg.xadd_n // 2, 50, 16, 500)
    finally:
        r.stop()


def median(xs):
    return statistics.median(xs) if xs else None


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    v = sorted(xs)
    rank = min(len(v), max(1, -(-len(v) * p // 100)))
    return v[int(rank) - 1]


def warm_up(con: Conn, module: bool = True) -> None:
    """Writes a few entries of a user of its own and waits for their commit: the first commit also
    opens the Snowflake session (key-pair JWT, connection), which is start-up, not steady state."""
    value = e2e_payload(0, 1).replace("bench000-1", "warmup-1")
    for _ in range(5):
        con.call("XADD", STREAM, "*", "value", value)
    if module:
        flush(con, 60_000)


def flush(con: Conn, timeout_ms: int) -> None:
    con.sock.settimeout(timeout_ms / 1000 + 30)
    r = con.call("WB.FLUSH", timeout_ms)
    if r != "OK":
        raise RuntimeError(f"WB.FLUSH answered {r!r}")


# --- 1. XADD throughput -----------------------------------------------------------------------------


def bench_xadd(tools, keys, cfg) -> dict:
    """Variants, interleaved: without the module; with it draining to the sink; with it draining to a
    sink at the lowest CPU priority (the sink's own CPU stands in for Snowflake's, which is not on the
    Redis host); with it loaded but paused (its threads parked: the module's presence alone)."""
    sink = Emulator(tools, keys, sink=True)
    idle_sink = Emulator(tools, keys, sink=True, nice=True)
    order = ["with", "without", "with_idle_sink", "paused"]
    runs = {v: [] for v in order}
    drained = {"with": [], "with_idle_sink": []}
    cpu = {"with": [], "with_idle_sink": [], "without": []}
    try:
        warm_up_machine(tools, cfg)
        for rep in range(cfg.reps):
            for variant in order if rep % 2 == 0 else list(reversed(order)):
                module = variant != "without"
                url = (idle_sink if variant == "with_idle_sink" else sink).url
                r = Redis(tools, module, module_env(url, keys, **cfg.module_env) if module else None)
                try:
                    con = r.conn()
                    if module:
                        wait_until("the writer", 30, lambda: con.status()["state"] == "running")
                    warm_up(con, module)
                    base = int(con.status()["records_written"]) if module else 0
                    if module:
                        if variant == "paused":
                            con.call("WB.PAUSE")
                    threads0, s0, i0 = thread_cpu(r.pid), cpu_seconds(sink.pid), cpu_seconds(idle_sink.pid)
                    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.monotonic()
                    rps = redis_benchmark(tools, r.port, cfg.xadd_n, 50, 16, 500)
                    wall = time.monotonic() - t0
                    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    runs[variant].append(rps)
                    if variant in cpu:
                        bench_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
                        cpu[variant].append({
                            "wall_s": round(wall, 2),
                            "redis_threads_cpu_s": cpu_delta(threads0, thread_cpu(r.pid)),
                            "sink_cpu_s": round(cpu_seconds(sink.pid) - s0 + cpu_seconds(idle_sink.pid) - i0, 2),
                            "redis_benchmark_cpu_s": round(bench_cpu, 2),
                        })
                    if variant in drained:
                        drained[variant].append(int(con.status()["records_written"]) - base)
                    log(f"xadd rep {rep + 1}/{cfg.reps} {variant:15s} {rps:,.0f} XADD/s")
                finally:
                    r.stop()
    finally:
        sink.stop()
        idle_sink.stop()
    m = {k: median(v) for k, v in runs.items()}
    ratio = m["with"] / m["without"]
    return {
        "what": "redis-benchmark XADD of a 1-record batch (-c 50 -P 16, 500 users), the same redis-server with and without the module; 'with' drains to the fast sink meanwhile",
        "entries_per_run": cfg.xadd_n,
        "xadd_per_s": runs,
        "median_xadd_per_s": m,
        "records_drained_during_run": drained,
        "cpu_during_run": cpu,
        "ratio_with_without": round(ratio, 4),
        "ratio_with_idle_sink_without": round(m["with_idle_sink"] / m["without"], 4),
        "ratio_paused_without": round(m["paused"] / m["without"], 4),
        "target": ">= 0.95",
        "met": ratio >= 0.95,
    }


# --- 1+. yielding to the foreground -----------------------------------------------------------------


class Sampler:
    """Polls WB.STATUS every `every` seconds from its own connection while a load runs: the group's
    lag, the drain mode and the main thread's busy figure over time."""

    def __init__(self, r: "Redis", every: float = 0.25):
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._con = r.conn()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                st = self._con.status()
            except (OSError, RedisError, ConnectionError):
                return
            self.samples.append({"t": round(time.monotonic() - self._t0, 2), "lag": int(st["lag"]),
                                 "mode": st["drain_mode"], "busy_pct": int(st["main_thread_busy_pct"]),
                                 "claim_hold_us": int(st.get("drain_last_hold_us", -1)),
                                 "ack_hold_us": int(st.get("drain_last_ack_hold_us", -1)),
                                 "share_pct": int(st.get("drain_lock_share_pct", -1))})
            self._stop.wait(every)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        self._con.close()
        return self.samples


def lag_summary(samples: list[dict]) -> dict:
    """Lag over a run: bounded when the second half's typical lag (its median) is not much above the
    first half's (a lag that grows with time is a drain that does not keep up; a batch's worth of
    spikes in a drain that keeps up is not growth)."""
    if not samples:
        return {"samples": 0}
    half = len(samples) // 2
    first = max((x["lag"] for x in samples[:half]), default=0)
    second = max((x["lag"] for x in samples[half:]), default=0)
    first_median = median([x["lag"] for x in samples[:half]]) or 0
    second_median = median([x["lag"] for x in samples[half:]]) or 0
    return {
        "samples": len(samples),
        "max": max(x["lag"] for x in samples),
        "peak_first_half": first,
        "peak_second_half": second,
        "median_first_half": first_median,
        "median_second_half": second_median,
        "last": samples[-1]["lag"],
        "bounded": second_median <= max(2 * first_median, 20_000),
        "yielding_share": round(sum(x["mode"] == "yielding" for x in samples) / len(samples), 2),
        "median_busy_pct": median([x["busy_pct"] for x in samples]),
        # The last lock hold of a claim and of an acknowledgement at each sample: a client that
        # arrives during a hold waits for the rest of it.
        "claim_hold_us": quantiles([x["claim_hold_us"] for x in samples]),
        "ack_hold_us": quantiles([x["ack_hold_us"] for x in samples]),
    }


def quantiles(values: list[int]) -> dict:
    """Median, 90th percentile and largest of sampled figures."""
    v = sorted(values)
    return {"p50": v[len(v) // 2], "p90": v[int(len(v) * 0.9)], "max": v[-1]} if v else {}


def main_thread_demand(pid: int) -> float:
    """Seconds Redis's main thread spent on a CPU or waiting for one (what the module's governor
    reads); over wall time, how busy it was."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return (int(run) + int(wait)) / 1e9
    except (OSError, ValueError):
        return 0.0


def main_thread_name(threads: dict[str, float]) -> str:
    return "valkey-server" if "valkey-server" in threads else "redis-server"


def foreground_run(tools, keys, cfg, sink: Emulator, module: bool, load, module_path: str | None = None,
                   conf_extra: list[str] | None = None, env_extra: dict | None = None) -> dict:
    """One XADD load (`load(port)`: redis-benchmark, or the open loop at a fixed rate) against a fresh
    server, with the module (`module_path`, or the build under test) draining meanwhile or without
    it; CPU by thread, records drained, lock time and lag over the run."""
    env = {**cfg.module_env, **(cfg.baseline_env if module_path else {}), **(env_extra or {})}
    r = Redis(tools, module, module_env(sink.url, keys, **env) if module else None, module_path=module_path,
              conf_extra=conf_extra)
    try:
        con = r.conn()
        if module:
            wait_until("the writer", 30, lambda: con.status()["state"] == "running")
        warm_up(con, module)
        base = con.status() if module else None
        threads0 = thread_cpu(r.pid)
        demand0 = main_thread_demand(r.pid)
        sink_cpu0 = cpu_seconds(sink.pid)
        sampler = Sampler(r) if module else None
        t0 = time.monotonic()
        res = load(r.port)
        wall = time.monotonic() - t0
        demand = main_thread_demand(r.pid) - demand0
        samples = sampler.stop() if sampler else []
        cpu = cpu_delta(threads0, thread_cpu(r.pid))
        out = {"xadd_per_s": round(res["rps"]), "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"], "wall_s": round(wall, 2),
               "cpu_s_by_thread": cpu, "main_cpu_s": cpu.get(main_thread_name(cpu), 0.0),
               "main_thread_busy": round(demand / wall, 3), **res.get("beside", {})}
        if module:
            st = con.status()
            out["sink_cpu_s"] = round(cpu_seconds(sink.pid) - sink_cpu0, 3)
            out["statements"] = int(st["statements"]) - int(base["statements"])
            out["records_drained"] = int(st["records_written"]) - int(base["records_written"])
            out["lock_held_s"] = (int(st["lock_held_ms"]) - int(base["lock_held_ms"])) / 1000
            out["lag"] = lag_summary(samples)
            out["lag_samples"] = samples
        return out
    finally:
        r.stop()


def per_record(run: dict, without_main_cpu_s: float) -> dict:
    """CPU µs per drained record by thread, and the main thread's time taken by the drain: its extra CPU
    against the run without the module (the same XADDs) plus the time the module held the lock."""
    drained = run.get("records_drained") or 0
    if drained <= 0:
        return {}
    by_thread = {k: round(v * 1e6 / drained, 2) for k, v in run["cpu_s_by_thread"].items()}
    module_threads = sum(v for k, v in run["cpu_s_by_thread"].items() if k.startswith("wb-"))
    extra_main = run["main_cpu_s"] - without_main_cpu_s
    return {
        "cpu_us_per_record_by_thread": by_thread,
        "module_threads_cpu_us_per_record": round(module_threads * 1e6 / drained, 2),
        "main_thread_extra_cpu_us_per_record": round(extra_main * 1e6 / drained, 2),
        "lock_held_us_per_record": round(run["lock_held_s"] * 1e6 / drained, 2),
        "main_thread_stolen_us_per_record": round((max(extra_main, 0.0) + run["lock_held_s"]) * 1e6 / drained, 2),
    }


def bench_foreground(tools, keys, cfg) -> dict:
    """The module's cost to Redis's own clients, side by side in one run: saturated (redis-benchmark
    -c 50 -P 16) and at about half that rate (fewer clients, shallower pipelines, chosen in this run), each
    with the module draining to the fast sink and without it, interleaved; with `--baseline-module`,
    that build's runs too, in the same rotation."""
    sink = Emulator(tools, keys, sink=True)
    # At half load the machine has CPU left, and the sink's own CPU (which stands in for Snowflake's,
    # not on this machine in production) competes with Redis's main thread for it: the same runs
    # with the sink at the lowest CPU priority tell the module's share of the p99 from the sink's.
    idle_sink = Emulator(tools, keys, sink=True, nice=True)
    variants = ["with", "without"] + (["baseline"] if cfg.baseline_module else [])
    half_variants = variants + ["with_idle_sink"]
    paths = {"with": None, "without": None, "baseline": cfg.baseline_module, "with_idle_sink": None,
             "with_apart": None, "without_apart": None}
    # CPUs apart, as a production host has them: Redis's main thread on one CPU (`server-cpulist`),
    # the module's threads on another (`BACKGROUND_CPUS`). The load generator shares the main
    # thread's CPU and the sink the module's: in production neither is on the Redis host, and here
    # neither then takes the CPU of what it is not measured against.
    cpus = sorted(os.sched_getaffinity(0))
    apart = (cpus[0], cpus[-1]) if len(cpus) >= 2 else None
    apart_sink = Emulator(tools, keys, sink=True, nice=True, cpus={apart[1]}) if apart else None
    if apart:
        half_variants += ["with_apart", "without_apart"]
    # What any drain costs here, without the module: the least consumer-group drain (read and
    # acknowledge, nothing else) beside the load, with everything sharing the CPUs and with the CPUs
    # apart; and a plain CPU load of the size and shape measured of the sink in this run's runs with
    # the module (its CPU per statement, once per statement's interval).
    half_variants += ["floor", "sink_load"] + (["floor_apart"] if apart else [])

    def order(rep, vs=variants):
        return vs if rep % 2 == 0 else list(reversed(vs))

    floor_s = cfg.half_load_s + 2  # the consumer outlasts the load, and acknowledges all of it

    def sink_shape():
        """The sink's CPU per statement and the interval between statements, in the half-load runs
        with the module so far (medians)."""
        runs = [x for x in half["with"] if x.get("statements")]
        return (median([x["sink_cpu_s"] / x["statements"] for x in runs]),
                median([x["wall_s"] / x["statements"] for x in runs]))

    def one(variant, load):
        if variant.endswith("_apart"):
            def apart_load(port):
                if variant == "floor_apart":
                    return beside_group_floor(tools, port, floor_s, lambda: load(port, {apart[0]}), {apart[1]})
                return load(port, {apart[0]})
            return foreground_run(tools, keys, cfg, apart_sink, variant.startswith("with_"), apart_load, None,
                                  conf_extra=[f"server-cpulist {apart[0]}"],
                                  env_extra={"BACKGROUND_CPUS": str(apart[1])})
        if variant == "floor":
            return foreground_run(tools, keys, cfg, sink, False,
                                  lambda port: beside_group_floor(tools, port, floor_s, lambda: load(port)))
        if variant == "sink_load":
            burst, period = sink_shape()
            return foreground_run(tools, keys, cfg, sink, False,
                                  lambda port: beside_cpu_load(tools, burst, period, lambda: load(port)))
        return foreground_run(tools, keys, cfg, idle_sink if variant == "with_idle_sink" else sink,
                              variant != "without", load, paths[variant])

    try:
        # Not counted: the first run with the module came out 30-55 % slower than the rest four
        # times in a row on 2026-12-04 (also after a run without the module): the sink's first
        # statements and the machine's first saturating load.
        one("with", lambda port: redis_benchmark_csv(tools, port, cfg.xadd_n // 2, 50, 16, 500))
        sat = {v: [] for v in variants}
        for rep in range(cfg.reps):
            for variant in order(rep):
                run = one(variant, lambda port: redis_benchmark_csv(tools, port, cfg.xadd_n, 50, 16, 500))
                sat[variant].append(run)
                log(f"foreground saturated rep {rep + 1}/{cfg.reps} {variant:8s} {run['xadd_per_s']:,} XADD/s"
                    + (f", {run['records_drained']:,} drained, lag peak {run['lag'].get('max')}, "
                       f"yielding {run['lag'].get('yielding_share')}" if variant != "without" else ""))
        saturated = median([x["xadd_per_s"] for x in sat["without"]])
        # Half load: Redis's main thread busy half the time without the module, under XADDs offered
        # at a fixed rate by an open loop (examples/xadd_load.rs). redis-benchmark has no rate limit:
        # a lighter load from fewer clients and shallower pipelines runs as fast as the server answers
        # (on this VM the same shape ranged over 2x between runs), and its latency leaves out the
        # commands a stalled server kept from being sent; here each command's latency counts from
        # when it was due. The rate is found by a few short runs without the module, each scaling the
        # last rate by how far the main thread's busy share was from a half (shallower pipelines cost
        # the main thread more per command than redis-benchmark's deep ones, so half the saturated
        # rate is more than half load).
        rate = saturated / 4
        calibration = []
        for _ in range(5):
            probe = foreground_run(tools, keys, cfg, sink, False,
                                   lambda port, r=rate: xadd_load(tools, port, r, 3, 500))
            busy = max(probe["main_thread_busy"], 0.05)
            calibration.append({"rate": round(rate), "main_thread_busy": probe["main_thread_busy"],
                                "p99_ms": probe["p99_ms"]})
            if abs(busy - 0.5) < 0.05:
                break
            rate = rate * min(max(0.5 / busy, 0.5), 2.0)
        shape = f"{rate:,.0f} XADD/s, open loop"
        log(f"foreground half load: {shape}, main thread busy {calibration[-1]['main_thread_busy']:.2f} without "
            f"the module (saturated {saturated:,.0f}/s)")

        def half_load(port, cpus=None):
            return xadd_load(tools, port, rate, cfg.half_load_s, 500, cpus)

        half = {v: [] for v in half_variants}
        for rep in range(cfg.reps):
            for variant in order(rep, half_variants):
                run = one(variant, half_load)
                half[variant].append(run)
                log(f"foreground half rep {rep + 1}/{cfg.reps} {variant:8s} {run['xadd_per_s']:,} XADD/s p99 {run['p99_ms']} ms"
                    + (f", {run['records_drained']:,} drained, lag peak {run['lag'].get('max')} last "
                       f"{run['lag'].get('last')}, yielding {run['lag'].get('yielding_share')}, "
                       f"claim holds {run['lag'].get('claim_hold_us')} us, ack holds {run['lag'].get('ack_hold_us')} us"
                       if variant.startswith("with") and not variant.startswith("without") else "")
                    + (f", floor acknowledged {run['floor_acked']:,}, left {run['floor_left']}" if "floor_acked" in run else ""))
    finally:
        sink.stop()
        idle_sink.stop()
        if apart_sink:
            apart_sink.stop()

    def med(runs, key):
        return median([x[key] for x in runs])

    def drain_rate(runs):
        return median([x["records_drained"] / x["wall_s"] for x in runs])

    def yielding(runs):
        return median([x["lag"].get("yielding_share", 0) for x in runs])

    def vs_without(pairs, variant, key, without="without"):
        return med(pairs[variant], key) / max(med(pairs[without], key), 1e-3)

    def drain_figures(runs):
        """How the drain kept up in runs with the module."""
        return {"median_drain_records_per_s": drain_rate(runs),
                "lag_bounded": all(x["lag"].get("bounded", False) for x in runs),
                "median_lag_peak": median([x["lag"].get("max", 0) for x in runs])}

    def floor_figures(variant, without):
        """The least consumer-group drain's runs against the runs without it in the same layout."""
        return {"p99_ratio_with_without": round(vs_without(half, variant, "p99_ms", without), 3),
                "median_p99_ms": med(half[variant], "p99_ms"),
                "median_main_thread_busy": med(half[variant], "main_thread_busy"),
                "acknowledged_all": all(x["floor_left"] == 0 for x in half[variant])}

    def med_per_record(pairs):
        main_without = med(pairs["without"], "main_cpu_s")
        per = [per_record(x, main_without) for x in pairs["with"]]
        per = [p for p in per if p]
        if not per:
            return {}
        threads = sorted({k for p in per for k in p["cpu_us_per_record_by_thread"]})
        return {
            "cpu_us_per_record_by_thread": {t: median([p["cpu_us_per_record_by_thread"].get(t, 0.0) for p in per]) for t in threads},
            **{k: median([p[k] for p in per]) for k in per[0] if k != "cpu_us_per_record_by_thread"},
        }

    ratio_sat = vs_without(sat, "with", "xadd_per_s")
    ratio_half = vs_without(half, "with", "xadd_per_s")
    p99_ratio = vs_without(half, "with", "p99_ms")
    half_drain = drain_figures(half["with"])
    bounded = half_drain["lag_bounded"]
    burst, period = sink_shape()
    baseline = {}
    if "baseline" in sat:
        baseline = {"baseline": {
            "module": cfg.baseline_module,
            "env": cfg.baseline_env,
            "saturated_ratio_with_without": round(vs_without(sat, "baseline", "xadd_per_s"), 4),
            "saturated_drain_records_per_s": drain_rate(sat["baseline"]),
            "saturated_yielding_share": yielding(sat["baseline"]),
            "half_ratio_with_without": round(vs_without(half, "baseline", "xadd_per_s"), 4),
            "half_p99_ratio_with_without": round(vs_without(half, "baseline", "p99_ms"), 3),
            "half_drain_records_per_s": drain_rate(half["baseline"]),
            "half_median_lag_peak": median([x["lag"].get("max", 0) for x in half["baseline"]]),
            "half_yielding_share": yielding(half["baseline"]),
        }}
    return {
        "what": "redis-benchmark XADD of a 1-record batch, fresh server per run, with the module draining to the fast sink and without, interleaved; saturated (-c 50 -P 16) and at half that rate offered by an open loop (examples/xadd_load.rs; latency from when each command was due), there also with the sink at the lowest CPU priority",
        "saturated": {
            "ratio_with_without": round(ratio_sat, 4),
            "median_xadd_per_s": {"with": med(sat["with"], "xadd_per_s"), "without": med(sat["without"], "xadd_per_s")},
            "median_main_thread_busy": {"with": med(sat["with"], "main_thread_busy"), "without": med(sat["without"], "main_thread_busy")},
            "pair_ratios": [round(a["xadd_per_s"] / b["xadd_per_s"], 3) for a, b in zip(sat["with"], sat["without"])],
            "median_records_drained": med(sat["with"], "records_drained"),
            "median_drain_records_per_s": drain_rate(sat["with"]),
            "per_record": med_per_record(sat),
            "runs": sat,
        },
        "half_load": {
            "shape": shape,
            "offered_xadd_per_s": round(rate),
            "calibration": calibration,
            "ratio_with_without": round(ratio_half, 4),
            "median_xadd_per_s": {"with": med(half["with"], "xadd_per_s"), "without": med(half["without"], "xadd_per_s")},
            "median_p99_ms": {"with": med(half["with"], "p99_ms"), "without": med(half["without"], "p99_ms")},
            "median_main_thread_busy": {"with": med(half["with"], "main_thread_busy"), "without": med(half["without"], "main_thread_busy")},
            "pair_ratios": [round(a["xadd_per_s"] / b["xadd_per_s"], 3) for a, b in zip(half["with"], half["without"])],
            "median_yielding_share": yielding(half["with"]),
            "p99_ratio_with_without": round(p99_ratio, 3),
            "idle_sink": {
                "ratio_with_without": round(vs_without(half, "with_idle_sink", "xadd_per_s"), 4),
                "p99_ratio_with_without": round(vs_without(half, "with_idle_sink", "p99_ms"), 3),
                "median_p99_ms": med(half["with_idle_sink"], "p99_ms"),
                **drain_figures(half["with_idle_sink"]),
            },
            "group_floor": {
                "what": "no module: examples/group_floor.rs reads and acknowledges every entry as a client "
                        "(XREADGROUP COUNT 2000 BLOCK 100, XACK), nothing else",
                **floor_figures("floor", "without"),
                **({"cpus_apart": floor_figures("floor_apart", "without_apart")} if apart else {}),
            },
            "sink_shaped_load": {
                "what": "no module: a plain CPU load of the sink's measured CPU per statement, once per statement interval",
                "burst_ms": round(burst * 1000, 2),
                "period_ms": round(period * 1000, 2),
                "p99_ratio_with_without": round(vs_without(half, "sink_load", "p99_ms"), 3),
                "median_p99_ms": med(half["sink_load"], "p99_ms"),
            },
            **({"cpus_apart": {
                "layout": f"main thread and load generator on CPU {apart[0]}, module threads and sink on CPU {apart[1]}",
                "p99_ratio_with_without": round(vs_without(half, "with_apart", "p99_ms", "without_apart"), 3),
                "median_p99_ms": {"with": med(half["with_apart"], "p99_ms"), "without": med(half["without_apart"], "p99_ms")},
                "median_main_thread_busy": {"with": med(half["with_apart"], "main_thread_busy"),
                                            "without": med(half["without_apart"], "main_thread_busy")},
                **drain_figures(half["with_apart"]),
            }} if apart else {}),
            **half_drain,
            "per_record": med_per_record(half),
            "runs": half,
        },
        "target": "saturated ratio >= 0.95; half load: lag bounded, p99 <= 1.1x",
        "met": ratio_sat >= 0.95 and bounded and p99_ratio <= 1.1,
        **baseline,
    }


# --- 2. drain rate ----------------------------------------------------------------------------------


def start_profiler(cfg, pid: int, name: str):
    """`perf record` (DWARF call graphs) of `pid` into `<--profile>/<name>.data` while a drain runs (nothing without
    `--profile`)."""
    if not cfg.profile:
        return None
    os.makedirs(cfg.profile, exist_ok=True)
    out = os.path.join(cfg.profile, f"{name}.data")
    # DWARF call graphs: the module is built without frame pointers.
    proc = spawn(["perf", "record", "--call-graph", "dwarf,16384", "-F", "499", "-p", str(pid), "-o", out],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # perf writes its file's header once it is attached to every thread.
    wait_until("perf record", 30, lambda: os.path.exists(out) and os.path.getsize(out) > 0)
    return proc


def stop_profiler(proc) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        if proc in _children:
            _children.remove(proc)


def bench_drain(tools, keys, cfg) -> dict:
    """Item 2; with `--baseline-module`, the same runs of a second build of the module interleaved
    with this one's (order reversed every other repetition), for a before/after of one run."""
    sink = Emulator(tools, keys, sink=True)
    builds = [("module", tools.module)] + ([("baseline", cfg.baseline_module)] if cfg.baseline_module else [])
    per = {(b, w): [] for b, _ in builds for w in cfg.workers}
    variants = [(b, path, w) for w in cfg.workers for b, path in builds]
    try:
        for rep in range(cfg.reps):
            for build, path, w in variants if rep % 2 == 0 else list(reversed(variants)):
                extra = cfg.baseline_env if build == "baseline" else {}
                r = Redis(tools, True, module_env(sink.url, keys, **{**cfg.module_env, **extra, 'WORKERS': w}),
                          module_path=path)
                try:
                    con = r.conn()
                    wait_until("the writer", 30, lambda: con.status()["state"] == "running")
                    warm_up(con)
                    base = con.status()
                    con.call("WB.PAUSE")
                    redis_benchmark(tools, r.port, cfg.drain_n, 8, 64, 500)
                    xlen = con.call("XLEN", STREAM) - int(base["stream_length"])
                    sink.reset()
                    cpu_s = cpu_seconds(sink.pid)
                    threads0 = thread_cpu(r.pid)
                    aof0 = r.aof_bytes()
                    t0 = time.monotonic()
                    profiler = start_profiler(cfg, r.pid, f"{build}-w{w}-rep{rep + 1}")
                    con.call("WB.RESUME")
                    flush(con, 600_000)
                    wall = time.monotonic() - t0
                    stop_profiler(profiler)
                    cpu_s = cpu_seconds(sink.pid) - cpu_s
                    by_thread = cpu_delta(threads0, thread_cpu(r.pid))
                    # The server's threads all live through a drain: their sum is its CPU, to the ns.
                    cpu_r = sum(by_thread.values())
                    st = con.status()
                    stats = sink.stats()
                    records = int(st["records_written"]) - int(base["records_written"])
                    run = {
                        "entries": xlen,
                        "records": records,
                        "wall_s": round(wall, 3),
                        "records_per_s": round(records / wall),
                        "redis_cpu_s_per_10k": round(cpu_r / records * 10_000, 4),
                        "redis_cpu_us_per_record": round(cpu_r / records * 1e6, 2),
                        "cpu_us_per_record_by_thread": {k: round(v * 1e6 / records, 2) for k, v in by_thread.items()},
                        "sink_cpu_s_per_10k": round(cpu_s / records * 10_000, 4),
                        "batches": int(st["batches"]) - int(base["batches"]),
                        "round_trips": stats["round_trips"],
                        "request_bytes_per_record": round(stats["bytes_received"] / records, 1),
                        "batch_latency_p50_ms": int(st["batch_latency_p50_ms"]),
                        # The Redis lock held by the module's threads: time Redis's own clients
                        # would have waited for, had they been there.
                        "lock_held_us_per_record": round(
                            (int(st["lock_held_ms"]) - int(base["lock_held_ms"])) * 1000 / records, 2),
                        # What draining writes to the AOF (with `--redis-conf 'appendonly yes'`).
                        "aof_bytes_per_record": round((r.aof_bytes() - aof0) / records, 1),
                    }
                    per[(build, w)].append(run)
                    log(f"drain rep {rep + 1}/{cfg.reps} {build} workers={w} {run['records_per_s']:,} records/s, "
                        f"{run['redis_cpu_us_per_record']} CPU us/record ("
                        + ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_us_per_record_by_thread"].items() if v >= 0.05)
                        + f"), lock held {run['lock_held_us_per_record']} us/record, {run['round_trips']} round trips, "
                        f"{run['request_bytes_per_record']} request bytes/record"
                        + (f", AOF {run['aof_bytes_per_record']} bytes/record" if run["aof_bytes_per_record"] else ""))
                finally:
                    r.stop()
    finally:
        sink.stop()
    summaries = {b: {} for b, _ in builds}
    for (build, w), runs in per.items():
        summaries[build][str(w)] = {
            "median_records_per_s": median([x["records_per_s"] for x in runs]),
            "median_redis_cpu_s_per_10k": median([x["redis_cpu_s_per_10k"] for x in runs]),
            "median_redis_cpu_us_per_record": median([x["redis_cpu_us_per_record"] for x in runs]),
            "median_cpu_us_per_record_by_thread": {
                t: median([x["cpu_us_per_record_by_thread"].get(t, 0.0) for x in runs])
                for t in sorted({t for x in runs for t in x["cpu_us_per_record_by_thread"]})},
            "median_sink_cpu_s_per_10k": median([x["sink_cpu_s_per_10k"] for x in runs]),
            "median_lock_held_us_per_record": median([x["lock_held_us_per_record"] for x in runs]),
            "runs": runs,
        }
    summary = summaries["module"]
    best = max(s["median_records_per_s"] for s in summary.values())
    return {
        "what": "records/s from a pre-filled stream (1-record entries, 500 users) to the emulator's fast sink, WB.RESUME to WB.FLUSH returning",
        "entries": cfg.drain_n,
        "by_workers": summary,
        **({"baseline_module": cfg.baseline_module, "baseline_env": cfg.baseline_env,
            "baseline_by_workers": summaries["baseline"]}
           if cfg.baseline_module else {}),
        "best_median_records_per_s": best,
        "target": ">= 50000 records/s",
        "met": best >= 50_000,
    }


# --- 3. end to end against the real SQL engine ------------------------------------------------------


def e2e_payload(i: int, users: int) -> str:
    u = i % users
    track = (i // users) % 10
    return json.dumps({"key": f"userdata-events:bench{u:03d}-1/visited", "records": [{
        "id": f"bench{u:03d}-1", "page_name": "search", "query_row_count": "5", "track_id": f"t{track}",
        "track_title": f"Title {track}", "track_type": "query", "track_url": f"/search?q=t{track}",
        "lastplus": LASTPLUS, "action": "v"}]}, separators=(",", ":"))


def bench_e2e(tools, keys, cfg) -> dict:
    n, users = cfg.e2e_n, 500
    emu = Emulator(tools, keys, sink=False)
    r = None
    try:
        r = Redis(tools, True, module_env(emu.url, keys, **cfg.module_env))
        con = r.conn()
        wait_until("the writer", 60, lambda: con.status()["state"] == "running")
        warm_up(con)
        base = con.status()
        con.call("WB.PAUSE")
        con.pipeline([["XADD", STREAM, "*", "value", e2e_payload(i, users)] for i in range(n)])
        emu.reset()
        t0 = time.monotonic()
        con.call("WB.RESUME")
        flush(con, 600_000)
        wall = time.monotonic() - t0
        st = con.status()
        stats = emu.stats()
        total = emu.sql("SELECT SUM(visited_count), COUNT(*) FROM TRACKED WHERE tracked_id LIKE 'bench%'")[0]
        visits = int(float(total[0] or 0))
        trips = stats["round_trips"]
        records = int(st["records_written"]) - int(base["records_written"])
        return {
            "what": f"{n} 1-record entries over {users} users, WB.RESUME to WB.FLUSH returning, emulator on its fakesnow/DuckDB engine",
            "records": records,
            "rows": int(float(total[1] or 0)),
            "visited_count_sum": visits,
            "exact": visits == n,
            "wall_s": round(wall, 3),
            "round_trips": trips,
            "statements": stats["statements"],
            "batches": int(st["batches"]) - int(base["batches"]),
            "records_per_round_trip": round(records / trips, 1) if trips else None,
            "target": "<= 1 round trip per 500 records",
            "met": trips <= records / 500 and visits == n,
        }
    finally:
        if r:
            r.stop()
        emu.stop()


# --- 3'. the module against a batched Python sidecar ------------------------------------------------

TS_FMT = "YYYY-MM-DD HH24:MI:SS"

# The MERGE a competent batched script sends: its batch aggregated per row in Python, one MERGE per
# batch, a single pass over TRACKED, no replay filter (a replay counts visits again). Every source
# column the WHEN clauses use also appears plainly in the INSERT, which the emulator's engine needs.
SIDECAR_MERGE = (
    "MERGE INTO TRACKED t USING (SELECT "
    "f.value:tracked_id::VARCHAR AS tracked_id, f.value:track_id::VARCHAR AS track_id, "
    "f.value:username::VARCHAR AS username, f.value:page_name::VARCHAR AS page_name, "
    "f.value:query_row_count::NUMBER(38,0) AS query_row_count, f.value:title::VARCHAR AS track_title, "
    "f.value:type::VARCHAR AS track_type, f.value:url::VARCHAR AS track_url, "
    "f.value:visits::NUMBER(38,0) AS visits, f.value:saved::NUMBER(1,0) AS saved, "
    f"TO_TIMESTAMP_NTZ(f.value:v::VARCHAR, '{TS_FMT}') AS v_ts, "
    f"TO_TIMESTAMP_NTZ(f.value:s::VARCHAR, '{TS_FMT}') AS s_ts, "
    f"TO_TIMESTAMP_NTZ(f.value:d::VARCHAR, '{TS_FMT}') AS d_ts, "
    f"TO_TIMESTAMP_NTZ(f.value:at::VARCHAR, '{TS_FMT}') AS at_ts "
    "FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f) s "
    "ON t.tracked_id = s.tracked_id AND t.track_id = s.track_id "
    "WHEN MATCHED THEN UPDATE SET username = s.username, "
    "page_name = COALESCE(s.page_name, t.page_name), "
    "query_row_count = COALESCE(s.query_row_count, t.query_row_count), "
    "track_title = COALESCE(s.track_title, t.track_title), "
    "track_type = COALESCE(s.track_type, t.track_type), "
    "track_url = COALESCE(s.track_url, t.track_url), "
    "visited_count = t.visited_count + s.visits, "
    "visited_dts = COALESCE(GREATEST(t.visited_dts, s.v_ts), t.visited_dts, s.v_ts), "
    "saved = CASE WHEN s.s_ts IS NULL AND s.d_ts IS NULL THEN t.saved ELSE s.saved END, "
    "saved_dts = COALESCE(GREATEST(t.saved_dts, s.s_ts), t.saved_dts, s.s_ts), "
    "deleted_dts = COALESCE(GREATEST(t.deleted_dts, s.d_ts), t.deleted_dts, s.d_ts), "
    "updated_dts = s.at_ts "
    "WHEN NOT MATCHED AND (s.visits > 0 OR s.s_ts IS NOT NULL) THEN INSERT "
    "(tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, "
    "visited_count, visited_dts, saved, saved_dts, deleted_dts, updated_dts) VALUES "
    "(s.tracked_id, s.track_id, s.username, s.page_name, s.query_row_count, s.track_title, s.track_type, "
    "s.track_url, s.visits, s.v_ts, s.saved, s.s_ts, s.d_ts, s.at_ts)"
)


def mixed_payload(i: int, users: int, rnd) -> str:
    """An entry of 1 or 2 records (1.3 on average) of one user: mostly visits, some saves and deletes."""
    u = rnd.randrange(users)
    saved = rnd.random() < 0.15
    n = 2 if rnd.random() < 0.3 else 1
    records = []
    for _ in range(n):
        track = rnd.randrange(6)
        action = ("s" if rnd.random() < 0.7 else "d") if saved else "v"
        records.append({"id": f"side{u:03d}-1", "page_name": "search", "query_row_count": str(rnd.randrange(50)),
                        "track_id": f"t{track}", "track_title": f"Title {track}", "track_type": "query",
                        "track_url": f"/search?q=t{track}", "lastplus": LASTPLUS, "action": action})
    kind = "saved" if saved else "visited"
    return json.dumps({"key": f"userdata-events:side{u:03d}-1/{kind}", "records": records}, separators=(",", ":"))


class Sidecar:
    """The batched Python sidecar: XREADGROUP a batch, aggregate it per row, one MERGE, XACK."""

    def __init__(self, url: str, token: str, con: Conn, batch: int, chunked: bool = False):
        self.url, self.token, self.con, self.batch, self.chunked = url, token, con, batch, chunked
        self.statements = 0
        self.records = 0

    def execute(self, sql: str, json_bind: str) -> None:
        body = json.dumps({"statement": sql, "timeout": 600, "database": DATABASE, "schema": SCHEMA,
                           "bindings": {"1": {"type": "TEXT", "value": json_bind}}}).encode()
        req = urllib.request.Request(self.url + "/api/v2/statements", data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "bench-sidecar/1.0",
            "Authorization": f"Bearer {self.token}",
            "X-Snowflake-Authorization-Token-Type": "PROGRAMMATIC_ACCESS_TOKEN"})
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.loads(r.read())
        handle = reply.get("statementHandle")
        while r.status == 202:
            time.sleep(0.05)  # the SQL API's own polling of a running statement
            poll = urllib.request.Request(f"{self.url}/api/v2/statements/{handle}", headers={
                "Authorization": f"Bearer {self.token}", "User-Agent": "bench-sidecar/1.0",
                "X-Snowflake-Authorization-Token-Type": "PROGRAMMATIC_ACCESS_TOKEN"})
            with urllib.request.urlopen(poll, timeout=600) as r:
                r.read()
        self.statements += 1

    def run(self) -> None:
        self.con.call("XGROUP", "CREATE", STREAM, "sidecar", "0", "MKSTREAM")
        while True:
            reply = self.con.call("XREADGROUP", "GROUP", "sidecar", "c1", "COUNT", self.batch, "STREAMS", STREAM, ">")
            entries = reply[0][1] if reply else []
            if not entries:
                return
            rows: dict = {}
            for entry_id, fields in entries:
                f = dict(zip(fields[0::2], fields[1::2]))
                try:
                    doc = json.loads(f.get("value", ""))
                except ValueError:
                    continue
                key = doc.get("key", "")
                user = key.split(":", 1)[-1].split("/", 1)[0].split("-", 1)[0]
                ms = int(entry_id.split("-", 1)[0])
                at = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                for rec in doc.get("records", []):
                    self.records += 1
                    r = rows.setdefault((rec["id"], rec.get("track_id", "")), {
                        "tracked_id": rec["id"], "track_id": rec.get("track_id", ""), "visits": 0, "saved": 0})
                    r["username"] = user
                    r["at"] = at
                    for src, dst in (("page_name", "page_name"), ("track_title", "title"), ("track_url", "url")):
                        if rec.get(src) is not None:
                            r[dst] = rec[src]
                    if rec.get("track_type") is not None:
                        r["type"] = rec["track_type"].upper()
                    if rec.get("query_row_count") not in (None, ""):
                        r["query_row_count"] = int(float(rec["query_row_count"]))
                    ts, action = rec.get("lastplus"), rec.get("action", "v")
                    if "/saved" not in key:
                        r["visits"] += 1
                        r["v"] = max(r.get("v", ts), ts)
                    elif action == "d":
                        r["saved"] = 0
                        r["d"] = max(r.get("d", ts), ts)
                    else:
                        r["saved"] = 1
                        r["s"] = max(r.get("s", ts), ts)
            if rows:
                values = list(rows.values())
                if self.chunked:
                    # The module's source shape: chunks of 32 rows, flattened twice.
                    values = [values[i : i + 32] for i in range(0, len(values), 32)]
                    sql = SIDECAR_MERGE.replace("LATERAL FLATTEN(input => b.j) f",
                                                "LATERAL FLATTEN(input => b.j) c, LATERAL FLATTEN(input => c.value) f")
                else:
                    sql = SIDECAR_MERGE
                self.execute(sql, json.dumps(values, separators=(",", ":")))
            self.con.call("XACK", STREAM, "sidecar", *[e[0] for e in entries])


def bench_sidecar(tools, keys, cfg) -> dict:
    """The module and a batched Python sidecar drain the same stream, on the real engine and the sink."""
    import random

    n, users = cfg.sidecar_n, 500
    rnd = random.Random(16)
    payloads = [mixed_payload(i, users, rnd) for i in range(n)]
    token = "bench-sidecar-token"
    token_file = os.path.join(_workdir, "sidecar.token")
    with open(token_file, "w") as f:
        f.write(token + "\n")
    out = {}
    runs = [("module", 0, False)] + [("sidecar", b, False) for b in cfg.sidecar_batches]
    for engine in ("real", "sink"):
        for who, batch, chunked in runs + ([("sidecar", max(cfg.sidecar_batches), True)] if engine == "real" else []):
            emu = Emulator(tools, keys, sink=(engine == "sink"), token_file=token_file)
            r = None
            try:
                if who == "module":
                    r = Redis(tools, True, module_env(emu.url, keys, **cfg.module_env))
                    con = r.conn(timeout=600)
                    wait_until("the writer", 60, lambda: con.status()["state"] == "running")
                    warm_up(con)
                    base = con.status()
                    con.call("WB.PAUSE")
                else:
                    r = Redis(tools, False)
                    con = r.conn(timeout=600)
                con.pipeline([["XADD", STREAM, "*", "value", p] for p in payloads])
                emu.reset()
                t0 = time.monotonic()
                if who == "module":
                    con.call("WB.RESUME")
                    flush(con, 1_800_000)
                    wall = time.monotonic() - t0
                    st = con.status()
                    records = int(st["records_written"]) - int(base["records_written"])
                else:
                    side = Sidecar(emu.url, token, con, batch, chunked)
                    side.run()
                    wall = time.monotonic() - t0
                    records = side.records
                stats = emu.stats()
                run = {"records": records, "wall_s": round(wall, 3), "records_per_s": round(records / wall),
                       "statements": stats["statements"],
                       "statements_per_10k_records": round(stats["statements"] / records * 10_000, 1)}
                if engine == "real":
                    total = emu.sql("SELECT SUM(visited_count), COUNT(*) FROM TRACKED")[0]
                    run["visited_count_sum"] = int(float(total[0] or 0))
                    run["rows"] = int(float(total[1] or 0))
                name = who if who == "module" else f"sidecar{'_chunked' if chunked else ''}_{batch}"
                out[f"{name}_{engine}"] = run
                log(f"sidecar item: {name} on the {engine} engine: {run['records_per_s']:,} records/s, "
                    f"{run['wall_s']} s, {run['statements']} statements")
            finally:
                if r:
                    r.stop()
                emu.stop()
    best = {e: max((out[f"sidecar_{b}_{e}"] for b in cfg.sidecar_batches), key=lambda x: x["records_per_s"])
            for e in ("real", "sink")}
    ratio = lambda e: round(out[f"module_{e}"]["records_per_s"] / best[e]["records_per_s"], 2)  # noqa: E731
    chunked = out[f"sidecar_chunked_{max(cfg.sidecar_batches)}_real"]
    per_10k = out["module_real"]["statements_per_10k_records"]
    return {
        "what": f"{n} entries (1-2 records, visits, saves, deletes) over {users} users, drained by the module "
                "(WB.RESUME to WB.FLUSH) and by a batched Python sidecar (XREADGROUP COUNT "
                f"{'/'.join(map(str, cfg.sidecar_batches))}, one aggregated MERGE per batch, XACK), one after the "
                "other in one run; ratios against the sidecar's fastest batch size",
        "runs": out,
        "best_sidecar": best,
        "ratio_real_engine": ratio("real"),
        "ratio_sink": ratio("sink"),
        "ratio_real_engine_vs_chunked_sidecar": round(out["module_real"]["records_per_s"] / chunked["records_per_s"], 2),
        "module_statements_per_10k_records": per_10k,
        "target": "module/sidecar >= 1.0 on the real engine (aim 2), >= 2 on the sink; <= 20 statements per 10k records",
        "met": ratio("real") >= 1.0 and ratio("sink") >= 2.0 and per_10k <= 20,
    }


# --- 4. latency at light load -----------------------------------------------------------------------


def entry_id(s: str) -> tuple[int, int]:
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def bench_latency(tools, keys, cfg) -> dict:
    sink = Emulator(tools, keys, sink=True)
    linger = 50
    r = None
    try:
        r = Redis(tools, True, module_env(sink.url, keys, **{**cfg.module_env, 'BATCH_LINGER_MS': linger}))
        writer, poller = r.conn(), r.conn()
        wait_until("the writer", 30, lambda: writer.status()["state"] == "running")
        # Warm up: the first commit also opens the Snowflake session (key-pair JWT, connection).
        t = time.monotonic()
        for i in range(5):
            writer.call("XADD", STREAM, "*", "value", e2e_payload(i, 500))
        flush(writer, 60_000)
        cold_ms = (time.monotonic() - t) * 1000
        base = writer.status()
        n = int(cfg.latency_s * cfg.latency_rate)
        interval = 1.0 / cfg.latency_rate
        outstanding: dict[str, tuple[tuple[int, int], float]] = {}
        lat: list[float] = []
        sent = 0
        start = time.monotonic()
        next_at = start
        deadline = start + cfg.latency_s + 60
        while (sent < n or outstanding) and time.monotonic() < deadline:
            now = time.monotonic()
            if sent < n and now >= next_at:
                t = time.monotonic()
                eid = writer.call("XADD", STREAM, "*", "value", e2e_payload(sent, 500))
                outstanding[eid] = (entry_id(eid), t)
                sent += 1
                next_at += interval
            if outstanding:
                pending, groups = poller.pipeline([["XPENDING", STREAM, GROUP, "-", "+", 10_000],
                                                   ["XINFO", "GROUPS", STREAM]])
                seen = time.monotonic()
                pend = {p[0] for p in pending}
                last = (0, 0)
                for g in groups:
                    g = dict(zip(g[0::2], g[1::2]))
                    if g.get("name") == GROUP:
                        last = entry_id(g["last-delivered-id"])
                for eid, (key, t) in list(outstanding.items()):
                    if key <= last and eid not in pend:
                        lat.append((seen - t) * 1000)
                        del outstanding[eid]
            time.sleep(0.0005)
        st = writer.status()
        if outstanding:
            raise RuntimeError(f"{len(outstanding)} entries not committed within the deadline")
        p50, p99 = pct(lat, 50), pct(lat, 99)
        return {
            "what": f"{cfg.latency_rate} entries/s for {cfg.latency_s} s to the fast sink, BATCH_LINGER_MS={linger}; XADD sent -> entry acknowledged (after commit), polled every ~1 ms",
            "entries": len(lat),
            "linger_ms": linger,
            "p50_ms": round(p50, 1),
            "p90_ms": round(pct(lat, 90), 1),
            "p99_ms": round(p99, 1),
            "max_ms": round(max(lat), 1),
            "module_batch_latency_p50_ms": int(st["batch_latency_p50_ms"]),
            "module_batch_latency_p99_ms": int(st["batch_latency_p99_ms"]),
            "batches": int(st["batches"]) - int(base["batches"]),
            "warm_up_first_commit_ms": round(cold_ms, 1),
            "target": f"p99 <= {linger + 50} ms (linger + 50 ms)",
            "met": p99 <= linger + 50,
        }
    finally:
        if r:
            r.stop()
        sink.stop()


# --- 5. memory with a backlog -----------------------------------------------------------------------


def bench_memory(tools, keys, cfg) -> dict:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: Snowflake is unreachable
    runs = {"with": [], "without": []}
    for rep in range(cfg.memory_reps):
        for variant in ("with", "without") if rep % 2 == 0 else ("without", "with"):
            module = variant == "with"
            r = Redis(tools, module, module_env(closed, keys, **{'RETRY_MAX_BACKOFF_MS': 2000, **cfg.module_env}) if module else None)
            try:
                con = r.conn()
                redis_benchmark(tools, r.port, cfg.memory_n, 8, 64, 500)
                xlen = con.call("XLEN", STREAM)
                run = {"entries": xlen}
                if module:
                    # Wait until the writer has claimed all it may (MAX_IN_FLIGHT) and holds it.
                    seen = {"v": None, "since": time.monotonic()}

                    def settled():
                        v = int(con.status()["in_flight"])
                        if v != seen["v"]:
                            seen["v"], seen["since"] = v, time.monotonic()
                        return v > 0 and time.monotonic() - seen["since"] > 3

                    wait_until("in-flight entries to settle", 120, settled, every=0.2)
                    st = con.status()
                    run.update(in_flight=int(st["in_flight"]), pending=int(st["pending"]), state=st["state"],
                               snowflake_session=st.get("snowflake_session"))
                mem = con.info("memory")
                run.update(used_memory=int(mem["used_memory"]), used_memory_rss=int(mem["used_memory_rss"]))
                runs[variant].append(run)
                log(f"memory rep {rep + 1}/{cfg.memory_reps} {variant:8s} used_memory {run['used_memory'] / 2**20:,.1f} MiB")
            finally:
                r.stop()
    w = median([x["used_memory"] for x in runs["with"]])
    wo = median([x["used_memory"] for x in runs["without"]])
    ratio = w / wo
    return {
        "what": f"{cfg.memory_n} entries (1-record batches) written while SNOWFLAKE_URL points at a closed port; INFO used_memory once the writer's in-flight count has settled",
        "entries": cfg.memory_n,
        "runs": runs,
        "median_used_memory_with": w,
        "median_used_memory_without": wo,
        "module_overhead_bytes": w - wo,
        "ratio_with_without": round(ratio, 4),
        "target": "<= 1.05",
        "met": ratio <= 1.05,
    }


# --- 6. restore and migration -----------------------------------------------------------------------


def seed_tracked(emu: Emulator, rows: int) -> None:
    """`rows` recent TRACKED rows over rows/10 users (visited, every fifth also saved), and their USERs."""
    recent = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    users = max(1, rows // 10)
    emu.sql('INSERT INTO "USER" (user_email, username) VALUES ' + ", ".join(
        f"('rest{u:04d}@example.com', 'rest{u:04d}')" for u in range(users)))
    values = []
    for i in range(rows):
        u, t = i % users, i // users
        saved = "1" if i % 5 == 0 else "0"
        saved_dts = f"'{recent}'" if saved == "1" else "NULL"
        values.append(f"('rest{u:04d}-1', 'r{t}', 'rest{u:04d}', 'page{t % 3}', 5, 'Title {t}', 'QUERY', '/r/{t}', "
                      f"3, '{recent}', {saved}, {saved_dts}, '00000000000000000001-00000000000000000000')")
    for i in range(0, len(values), 500):
        emu.sql("INSERT INTO TRACKED (tracked_id, track_id, username, page_name, query_row_count, track_title, "
                "track_type, track_url, visited_count, visited_dts, saved, saved_dts, last_entry_id) VALUES "
                + ", ".join(values[i : i + 500]))


def make_dump(tools, n_records: int) -> str:
    """A dump of the old deployment: half legacy string keys, half stream entries, 5 records each, 200 users."""
    r = Redis(tools, False)
    try:
        con = r.conn()
        entries = n_records // 5
        t0_ms = 1_762_171_200_000  # 2025-11-03 12:00:00 UTC, the records' lastplus
        cmds = []
        for i in range(entries):
            user = f"user{i % 200}-1"
            recs = [{"id": user, "page_name": "search", "query_row_count": "5", "track_id": f"t{(i + k) % 7}",
                     "track_title": f"Title t{(i + k) % 7}", "track_type": "query",
                     "track_url": f"/search?q=t{(i + k) % 7}", "lastplus": LASTPLUS, "action": "v"} for k in range(5)]
            value = json.dumps({"key": f"userdata-events:{user}/visited", "records": recs}, separators=(",", ":"))
            if i < entries // 2:
                cmds.append(["SET", f"legacy:{i}", value])
            else:
                cmds.append(["XADD", STREAM, f"{t0_ms}-{i}", "value", value])
        con.pipeline(cmds)
        con.call("SAVE")
        path = os.path.join(_workdir, "old-deployment.rdb")
        shutil.copy(os.path.join(r.dir, "dump.rdb"), path)
        return path
    finally:
        r.stop()


def bench_restore(tools, keys, cfg) -> dict:
    out = {}
    emu = Emulator(tools, keys, sink=False)
    r = None
    try:
        seed_tracked(emu, cfg.restore_rows)
        r = Redis(tools, True, module_env(emu.url, keys, RESTORE_LIMIT_TOTAL=cfg.restore_rows))
        con = r.conn()
        wait_until("the writer", 60, lambda: con.status()["state"] == "running")
        emu.reset()
        t0 = time.monotonic()
        con.sock.settimeout(600)
        flat = con.call("WB.RESTORE", "FORCE")
        wall = time.monotonic() - t0
        got = dict(zip(flat[0::2], flat[1::2]))
        stats = emu.stats()
        out["restore"] = {
            "what": f"WB.RESTORE FORCE of {cfg.restore_rows} recent TRACKED rows into an empty stream (emulator's real engine)",
            "rows": got.get("rows"),
            "entries": got.get("entries"),
            "stream_length": con.call("XLEN", STREAM),
            "wall_s": round(wall, 3),
            "round_trips": stats["round_trips"],
        }
        log(f"restore: {out['restore']}")
    finally:
        if r:
            r.stop()
        emu.stop()

    dump = make_dump(tools, cfg.migrate_records)
    emu = Emulator(tools, keys, sink=False)
    try:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env.update(module_env(emu.url, keys))
        del env["SKIP_FRESHNESS"]  # entry IDs match the records' lastplus, as in a real dump
        emu.reset()
        t0 = time.monotonic()
        code, _, err = run_to_end([tools.migrate, "--redis-server", tools.redis_server, "--match", "legacy:*", dump],
                                  1800, env=env)
        wall = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(f"wb-migrate failed:\n{err[-3000:]}")
        stats = emu.stats()
        total = emu.sql("SELECT SUM(visited_count) FROM TRACKED")[0][0]
        out["migrate"] = {
            "what": f"wb-migrate of a dump with {cfg.migrate_records} records (half legacy keys, half stream entries, 5 records each, 200 users)",
            "records": cfg.migrate_records,
            "visited_count_sum": int(float(total or 0)),
            "exact": int(float(total or 0)) == cfg.migrate_records,
            "wall_s": round(wall, 3),
            "round_trips": stats["round_trips"],
            "anchor": "old tooling: 10,000 records in under 6 minutes",
            "summary": [line for line in err.splitlines() if "records:" in line][-1:],
        }
        log(f"migrate: {out['migrate']}")
    finally:
        emu.stop()
    return out


# --- report -----------------------------------------------------------------------------------------


# --- 7. hash mappings against the userdata stream ----------------------------------------------------

MAPPINGS_YAML = """mappings:
  - name: persons
    key_prefix: "person:"
    table: PERSONS
    key_column: PERSON_ID
    columns: {first_name: FIRST_NAME, last_name: LAST_NAME, age: AGE}
"""


def bench_mappings(tools, keys, cfg) -> dict:
    """Hash changes written per second by a mapping, and 1-record userdata entries per second, each
    drained from a paused backlog to the emulator's real engine, side by side in one run."""
    n, keyspace = cfg.e2e_n, 2_000
    emu = Emulator(tools, keys, sink=False)
    emu.sql("CREATE TABLE IF NOT EXISTS PERSONS (PERSON_ID NUMBER(38,0) NOT NULL, FIRST_NAME VARCHAR(100), "
            "LAST_NAME VARCHAR(100), AGE NUMBER(3,0))")
    path = os.path.join(_workdir, "mappings.yaml")
    with open(path, "w") as f:
        f.write(MAPPINGS_YAML)
    runs = {}
    try:
        for kind in ("mapping", "userdata"):
            r = Redis(tools, True, module_env(emu.url, keys, **{**cfg.module_env, "MAPPINGS_FILE": path}))
            try:
                con = r.conn()
                wait_until("the writer", 60, lambda: con.status()["state"] == "running")
                warm_up(con)
                con.call("WB.PAUSE")
                if kind == "mapping":
                    con.pipeline([["HSET", f"person:{i % keyspace}", "first_name", f"n{i}", "last_name", "x",
                                   "age", str(i % 100)] for i in range(n)])
                else:
                    con.pipeline([["XADD", STREAM, "*", "value", e2e_payload(i, 500)] for i in range(n)])
                base = con.status()
                emu.reset()
                cpu = cpu_seconds(r.pid)
                t0 = time.monotonic()
                con.call("WB.RESUME")
                flush(con, 600_000)
                wall = time.monotonic() - t0
                cpu = cpu_seconds(r.pid) - cpu
                st = con.status()
                if kind == "mapping":
                    done = int(st["mapping.persons.written"]) - int(base.get("mapping.persons.written", 0))
                else:
                    done = int(st["records_written"]) - int(base["records_written"])
                runs[kind] = {
                    "changes": done,
                    "wall_s": round(wall, 3),
                    "per_s": round(done / wall),
                    "redis_cpu_s_per_10k": round(cpu / max(done, 1) * 10_000, 4),
                    "statements": emu.stats()["statements"],
                }
                log(f"mappings bench {kind}: {runs[kind]['per_s']:,}/s, {runs[kind]['statements']} statements")
            finally:
                r.stop()
        rows = emu.sql("SELECT COUNT(*) FROM PERSONS")[0][0]
    finally:
        emu.stop()
    m, u = runs["mapping"], runs["userdata"]
    return {
        "what": f"{n} HSETs over {keyspace} keys vs {n} 1-record userdata entries, each from a paused backlog, "
                "WB.RESUME to WB.FLUSH returning, emulator on its fakesnow/DuckDB engine",
        "runs": runs,
        "rows": int(float(rows or 0)),
        "ratio_mapping_userdata": round(m["per_s"] / max(u["per_s"], 1), 3),
        "target": "report (hash changes/s beside the userdata stream's records/s)",
    }


def cluster_ports(n: int) -> list[int]:
    """`n` ports free together with their cluster bus ports (+10000), all below the ephemeral range."""
    ports, p = [], 20_000 + os.getpid() % 2_000
    while len(ports) < n:
        p += 1
        ok = True
        for q in (p, p + 10_000):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", q))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            ports.append(p)
    return ports


def start_cluster(tools, env: dict, primaries: int, pinned: bool = False) -> list[Redis]:
    """`primaries` cluster-enabled servers with the module, formed by the server's own CLI (or, for
    fewer than three, by giving each an even share of the slots and meeting them). `pinned`: node i
    runs on CPU i only."""
    nodes = [Redis(tools, True, env, port=port, cpus={i} if pinned else None,
                   conf_extra=["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000"])
             for i, port in enumerate(cluster_ports(primaries))]
    if primaries < 3:
        # The CLI forms clusters of three or more primaries.
        share = 16384 // primaries
        for i, node in enumerate(nodes):
            last = 16383 if i == primaries - 1 else (i + 1) * share - 1
            node.conn().call("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            if i > 0:
                node.conn().call("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        for node in nodes:
            c = node.conn()
            wait_until("cluster_state:ok", 60, lambda: "cluster_state:ok" in c.call("CLUSTER", "INFO")
                       and f"cluster_known_nodes:{primaries}" in c.call("CLUSTER", "INFO"))
        return nodes
    cli = os.path.join(tools.bin_dir, "redis-cli")
    out = subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                          "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True)
    if out.returncode != 0 or "All 16384 slots covered" not in out.stdout:
        for n in nodes:
            n.stop()
        raise RuntimeError(f"cluster create failed: {out.stdout[-2000:]} {out.stderr[-1000:]}")
    for n in nodes:
        c = n.conn()
        wait_until("cluster_state:ok", 60, lambda: "cluster_state:ok" in c.call("CLUSTER", "INFO"))
    return nodes


def shard_of(user: str, shards: int) -> int:
    return zlib.crc32(user.encode()) % shards


CLUSTER_RUNS = (
    # label, primaries, shard streams, each primary pinned to a core of its own
    ("3 primaries, 1 stream", 3, 1, False),
    ("3 primaries, 12 shard streams", 3, 12, False),
    ("1 primary on 1 core, 12 shard streams", 1, 12, True),
    ("2 primaries on 1 core each, 12 shard streams", 2, 12, True),
)


def bench_cluster(tools, keys, cfg) -> dict:
    """Drain throughput as the write-behind is spread: one stream on a 3-primary cluster (one primary
    drains everything) against 12 shard streams on the same 3 primaries; and, to see what a primary
    with cores of its own adds on a 2-core host, 12 shard streams on 1 primary pinned to one core
    against 2 primaries pinned to one core each. Each run drains the same paused backlog of 1-record
    entries (500 users) to the emulator's fast sink, WB.RESUME on every node to WB.FLUSH returning
    on every node."""
    n, users = cfg.cluster_n, 500
    sink = Emulator(tools, keys, sink=True)
    runs = {}
    try:
        order = [run for rep in range(cfg.cluster_reps)
                 for run in (CLUSTER_RUNS if rep % 2 == 0 else CLUSTER_RUNS[::-1])]
        for label, primaries, shards, pinned in order:
            env = module_env(sink.url, keys, **{**cfg.module_env, "STREAM_SHARDS": shards})
            nodes = start_cluster(tools, env, primaries, pinned)
            try:
                cons = {node.port: node.conn(timeout=900) for node in nodes}
                for c in cons.values():
                    c.call("WB.PAUSE")
                by_stream: dict[str, list] = {}
                for i in range(n):
                    user = f"bench{i % users:03d}-1"
                    stream = STREAM if shards == 1 else f"{STREAM}:{{{shard_of(user, shards)}}}"
                    by_stream.setdefault(stream, []).append(
                        ["XADD", stream, "*", "value", e2e_payload(i, users)])
                owner = {}
                for stream, commands in by_stream.items():
                    slot = cons[nodes[0].port].call("CLUSTER", "KEYSLOT", stream)
                    for node in nodes:
                        c = cons[node.port]
                        try:
                            c.call("EXISTS", stream)
                        except RedisError:
                            continue
                        owner[stream] = node.port
                        c.pipeline(commands)
                        break
                    else:
                        raise RuntimeError(f"no node serves {stream} (slot {slot})")
                busy = len(set(owner.values()))
                cpu0 = {node.port: cpu_seconds(node.pid) for node in nodes}
                sink.reset()
                sink_cpu0 = cpu_seconds(sink.pid)
                t0 = time.monotonic()
                for c in cons.values():
                    c.call("WB.RESUME")
                errors: list[str] = []

                def flush_one(c):
                    try:
                        flush(c, 600_000)
                    except Exception as e:  # noqa: BLE001 - reported below
                        errors.append(str(e))

                threads = [threading.Thread(target=flush_one, args=(c,)) for c in cons.values()]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.monotonic() - t0
                if errors:
                    raise RuntimeError(f"WB.FLUSH: {errors}")
                records = sum(int(c.status()["records_written"]) for c in cons.values())
                per_node = [cpu_seconds(node.pid) - cpu0[node.port] for node in nodes]
                cpu = sum(per_node)
                sink_cpu = cpu_seconds(sink.pid) - sink_cpu0
                runs.setdefault(label, []).append({
                    "primaries": primaries,
                    "shards": shards,
                    "primaries_draining": busy,
                    "records": records,
                    "wall_s": round(wall, 3),
                    "records_per_s": round(records / wall),
                    "redis_cpu_us_per_record": round(cpu / max(records, 1) * 1e6, 2),
                    # The sink is one Python process: near 100 %, it is what limits the drain.
                    "sink_cpu_pct": round(sink_cpu / wall * 100),
                    "redis_cpu_pct": round(cpu / wall * 100),
                    # How the drain's work spreads: the busiest primary's share of the CPU.
                    "busiest_primary_cpu_share_pct": round(max(per_node) / max(cpu, 1e-9) * 100),
                    "round_trips": sink.stats()["round_trips"],
                })
                last = runs[label][-1]
                log(f"cluster bench {label}: {last['records_per_s']:,} records/s, "
                    f"{busy} primaries draining, {last['redis_cpu_us_per_record']} CPU us/record")
            finally:
                for node in nodes:
                    node.stop()
    finally:
        sink.stop()
    summary = {
        label: {k: median([r[k] for r in rs]) for k in
                ("records_per_s", "redis_cpu_us_per_record", "redis_cpu_pct", "sink_cpu_pct", "primaries_draining",
                 "busiest_primary_cpu_share_pct")}
        | {"runs": rs}
        for label, rs in runs.items()
    }
    rate = lambda label: summary[label]["records_per_s"]  # noqa: E731
    return {
        "what": f"{n} 1-record entries over 500 users drained from a paused backlog to the fast sink, "
                f"WB.RESUME to WB.FLUSH returning on every node; medians of {cfg.cluster_reps} interleaved runs",
        "runs": summary,
        "ratio_sharded_vs_one_stream": round(rate(CLUSTER_RUNS[1][0]) / max(rate(CLUSTER_RUNS[0][0]), 1), 3),
        "ratio_two_vs_one_pinned_primary": round(rate(CLUSTER_RUNS[3][0]) / max(rate(CLUSTER_RUNS[2][0]), 1), 3),
        "cores": os.cpu_count(),
        "target": "drain grows with the primaries draining (bounded by the host's cores)",
    }


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release()}


def table(results: dict) -> str:
    rows = []
    it = results["items"]
    yes = lambda m: "yes" if m else "NO"  # noqa: E731
    if "xadd" in it:
        x = it["xadd"]
        m = x["median_xadd_per_s"]
        rows.append(("1 XADD throughput with/without module",
                     f"{x['ratio_with_without']:.3f} ({m['with']:,.0f} vs {m['without']:,.0f}/s)", ">= 0.95", yes(x["met"])))
        rows.append(("1' same, sink at lowest CPU priority",
                     f"{x['ratio_with_idle_sink_without']:.3f} ({m['with_idle_sink']:,.0f}/s)", "(diagnostic)", "-"))
        rows.append(("1'' same, module loaded but paused",
                     f"{x['ratio_paused_without']:.3f} ({m['paused']:,.0f}/s)", "(diagnostic)", "-"))
    if "foreground" in it:
        f = it["foreground"]
        s_, h = f["saturated"], f["half_load"]
        m = s_["median_xadd_per_s"]
        rows.append(("1+ XADD with/without, saturated (governed drain)",
                     f"{s_['ratio_with_without']:.3f} ({m['with']:,.0f} vs {m['without']:,.0f}/s; pairs "
                     f"{', '.join(f'{x:.2f}' for x in s_['pair_ratios'])}), drained {s_['median_drain_records_per_s']:,.0f} rec/s",
                     ">= 0.95", yes(s_["ratio_with_without"] >= 0.95)))
        m = h["median_xadd_per_s"]
        rows.append((f"1+ XADD with/without, half load ({h['shape']})",
                     f"{h['ratio_with_without']:.3f} ({m['with']:,.0f} vs {m['without']:,.0f}/s), main thread busy "
                     f"{h['median_main_thread_busy']['without']:.2f} without, yielding {h['median_yielding_share']:.0%} of the time",
                     "(report)", "-"))
        p = h["median_p99_ms"]
        rows.append(("1+ p99 XADD latency with/without, half load",
                     f"{h['p99_ratio_with_without']:.2f}x ({p['with']:.3f} vs {p['without']:.3f} ms)", "<= 1.1x",
                     yes(h["p99_ratio_with_without"] <= 1.1)))
        rows.append(("1+ lag at half load", f"peak {h['median_lag_peak']:,.0f} entries, bounded: {h['lag_bounded']}",
                     "bounded", yes(h["lag_bounded"])))
        def kept_up(x):
            return (f"drained {x['median_drain_records_per_s']:,.0f} rec/s, lag peak {x['median_lag_peak']:,.0f} "
                    f"(bounded: {x['lag_bounded']})")

        i = h.get("idle_sink")
        if i:
            rows.append(("1+ half load, sink at lowest CPU priority: XADD, p99, drain",
                         f"{i['ratio_with_without']:.3f}, p99 {i['p99_ratio_with_without']:.2f}x ({i['median_p99_ms']:.3f} ms), "
                         + kept_up(i), "(diagnostic)", "-"))
        a = h.get("cpus_apart")
        if a:
            p = a["median_p99_ms"]
            rows.append(("1+ p99 with/without, half load, CPUs apart (server-cpulist, BACKGROUND_CPUS)",
                         f"{a['p99_ratio_with_without']:.2f}x ({p['with']:.3f} vs {p['without']:.3f} ms), "
                         f"{kept_up(a)}; {a['layout']}", "(report)", "-"))
        g = h.get("group_floor")
        if g:
            ga = g.get("cpus_apart")
            rows.append(("1+ p99, half load, no module: the least consumer-group drain (examples/group_floor.rs)",
                         f"{g['p99_ratio_with_without']:.2f}x ({g['median_p99_ms']:.3f} ms), main thread busy "
                         f"{g['median_main_thread_busy']:.2f}"
                         + (f"; CPUs apart {ga['p99_ratio_with_without']:.2f}x ({ga['median_p99_ms']:.3f} ms)" if ga else "")
                         + f"; acknowledged all: {g['acknowledged_all'] and (not ga or ga['acknowledged_all'])}",
                         "(diagnostic)", "-"))
        k = h.get("sink_shaped_load")
        if k:
            rows.append(("1+ p99, half load, no module: a plain CPU load shaped as the sink measured",
                         f"{k['p99_ratio_with_without']:.2f}x ({k['median_p99_ms']:.3f} ms); {k['burst_ms']:.2f} ms "
                         f"of CPU every {k['period_ms']:.1f} ms", "(diagnostic)", "-"))
        b = f.get("baseline")
        if b:
            rows.append(("1+ baseline build: saturated ratio; half load ratio, p99",
                         f"{b['saturated_ratio_with_without']:.3f} (drained {b['saturated_drain_records_per_s']:,.0f} rec/s, "
                         f"yielding {b['saturated_yielding_share']}); {b['half_ratio_with_without']:.3f}, "
                         f"{b['half_p99_ratio_with_without']:.2f}x (drained {b['half_drain_records_per_s']:,.0f} rec/s, "
                         f"lag peak {b['half_median_lag_peak']:,})", "(compare)", "-"))
        for label, part in (("saturated", s_), ("half load", h)):
            pr = part["per_record"]
            if pr:
                threads = ", ".join(f"{k} {v:.2f}" for k, v in pr["cpu_us_per_record_by_thread"].items() if v >= 0.05)
                rows.append((f"1+ CPU us/drained record by thread, {label}", threads, "(report)", "-"))
                rows.append((f"1+ main thread stolen us/drained record, {label}",
                             f"{pr['main_thread_stolen_us_per_record']:.2f} (extra CPU {pr['main_thread_extra_cpu_us_per_record']:.2f}, "
                             f"lock {pr['lock_held_us_per_record']:.2f})", "(report)", "-"))
    if "drain" in it:
        d = it["drain"]
        builds = [("", d["by_workers"])] + ([(" (baseline)", d["baseline_by_workers"])] if "baseline_by_workers" in d else [])
        for (label, by_workers), (w, s) in ((b, x) for b in builds for x in b[1].items()):
            rows.append((f"2 drain to fast sink, {w} worker{'s' if w != '1' else ''}{label}",
                         f"{s['median_records_per_s']:,.0f} rec/s, {s['median_redis_cpu_us_per_record']:.2f} CPU us/rec ("
                         + ", ".join(f"{k} {v:.2f}" for k, v in s["median_cpu_us_per_record_by_thread"].items() if v >= 0.05) + ")",
                         ">= 50,000 rec/s", yes(s["median_records_per_s"] >= 50_000)))
    if "e2e" in it:
        e = it["e2e"]
        rows.append((f"3 end to end, {e['records']:,} records / 500 users",
                     f"{e['wall_s']:.1f} s, {e['round_trips']} round trips ({e['records_per_round_trip']} rec/trip)",
                     "<= 1 trip / 500 rec", yes(e["met"])))
    if "sidecar" in it:
        sc = it["sidecar"]
        m, side = sc["runs"]["module_real"], sc["best_sidecar"]["real"]
        rows.append((f"3' vs batched sidecar, real engine, {m['records']:,} records",
                     f"{sc['ratio_real_engine']:.2f}x ({m['records_per_s']:,} vs {side['records_per_s']:,} rec/s), "
                     f"{m['statements']} vs {side['statements']} statements",
                     ">= 1.0x (aim 2x)", yes(sc["ratio_real_engine"] >= 1.0)))
        rows.append(("3' same, sidecar given the module's chunked source",
                     f"{sc['ratio_real_engine_vs_chunked_sidecar']:.2f}x", "(diagnostic)", "-"))
        m, side = sc["runs"]["module_sink"], sc["best_sidecar"]["sink"]
        rows.append(("3' vs batched sidecar, fast sink",
                     f"{sc['ratio_sink']:.2f}x ({m['records_per_s']:,} vs {side['records_per_s']:,} rec/s)",
                     ">= 2x", yes(sc["ratio_sink"] >= 2.0)))
        rows.append(("3' module statements per 10,000 records", f"{sc['module_statements_per_10k_records']}",
                     "<= 20", yes(sc["module_statements_per_10k_records"] <= 20)))
    if "latency" in it:
        lt = it["latency"]
        rows.append(("4 latency at 100 entries/s (XADD -> acked)",
                     f"p50 {lt['p50_ms']:.0f} ms, p99 {lt['p99_ms']:.0f} ms", lt["target"].split(" (")[0], yes(lt["met"])))
    if "memory" in it:
        mm = it["memory"]
        rows.append((f"5 used_memory, {mm['entries']:,}-entry backlog, with/without",
                     f"{mm['ratio_with_without']:.3f} (+{mm['module_overhead_bytes'] / 2**20:.1f} MiB)", "<= 1.05", yes(mm["met"])))
    if "restore" in it:
        rs = it["restore"]
        if "restore" in rs:
            r = rs["restore"]
            rows.append((f"6 restore {r['rows']} rows", f"{r['wall_s']:.2f} s, {r['round_trips']} round trips", "report", "-"))
        if "migrate" in rs:
            g = rs["migrate"]
            rows.append((f"6 wb-migrate {g['records']:,} records", f"{g['wall_s']:.2f} s, {g['round_trips']} round trips",
                         "< 6 min (anchor)", yes(g["wall_s"] < 360 and g["exact"])))
    if "cluster" in it:
        cl = it["cluster"]
        for label, r in cl["runs"].items():
            rows.append((f"8 cluster drain, {label}",
                         f"{r['records_per_s']:,.0f} records/s ({r['primaries_draining']} draining, "
                         f"{r['redis_cpu_us_per_record']} CPU us/record; CPU redis {r['redis_cpu_pct']} %, "
                         f"busiest primary {r['busiest_primary_cpu_share_pct']} % of it, sink {r['sink_cpu_pct']} %)",
                         "report", "-"))
        rows.append(("8 cluster drain, 12 shard streams / 1 stream, 3 primaries",
                     f"{cl['ratio_sharded_vs_one_stream']:.2f}x ({cl['cores']} cores)", "grows with primaries", "-"))
        rows.append(("8 cluster drain, 2 / 1 primaries, a core each",
                     f"{cl['ratio_two_vs_one_pinned_primary']:.2f}x", "grows with primaries", "-"))
    if "mappings" in it:
        mp = it["mappings"]
        m, u = mp["runs"]["mapping"], mp["runs"]["userdata"]
        rows.append((f"7 hash changes written vs userdata records, {m['changes']:,} each",
                     f"{mp['ratio_mapping_userdata']:.2f}x ({m['per_s']:,} vs {u['per_s']:,}/s), "
                     f"{m['statements']} vs {u['statements']} statements", "report", "-"))
    w = [max(len(r[i]) for r in rows + [("item", "figure", "target", "met")]) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    out = [line(("item", "figure", "target", "met")), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


ITEMS = {"xadd": bench_xadd, "foreground": bench_foreground, "drain": bench_drain, "e2e": bench_e2e, "sidecar": bench_sidecar, "latency": bench_latency, "mappings": bench_mappings,
         "cluster": bench_cluster,
         "memory": bench_memory, "restore": bench_restore}


def main() -> int:
    global _workdir, _redis_conf
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller N and fewer repetitions (a smoke run)")
    p.add_argument("--out", default=os.path.join(REPO, "target/bench/results.json"))
    p.add_argument("--only", default=",".join(ITEMS), help="comma-separated items: " + ",".join(ITEMS))
    p.add_argument("--reps", type=int, help="repetitions of the interleaved items 1 and 2")
    p.add_argument("--module-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a module setting for every server with the module (repeatable), e.g. MAX_IN_FLIGHT=5000")
    p.add_argument("--redis-conf", action="append", default=[], metavar="LINE",
                   help="a line added to every server's configuration, e.g. 'appendonly yes' (repeatable)")
    p.add_argument("--workers", default="1,2,4", help="item 2's WORKERS values, comma-separated")
    p.add_argument("--drain-entries", type=int, help="item 2's pre-filled entries (default 200,000; --quick 50,000)")
    p.add_argument("--baseline-module", metavar="PATH",
                   help="item 2 also runs this build of the module, interleaved with the current one (a before/after)")
    p.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a module setting for the baseline's servers only (repeatable): with --baseline-module of "
                        "the same build, a side by side of two settings, e.g. ACK_MODE=WRITTEN_GROUP")
    p.add_argument("--profile", metavar="DIR",
                   help="item 2 records each drain with `perf record --call-graph dwarf` into DIR (one perf.data per run)")
    p.add_argument("--redis-server", required=True)
    p.add_argument("--module", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--migrate", required=True)
    p.add_argument("--xadd-load", required=True, help="the open-loop XADD load (examples/xadd_load.rs)")
    a = p.parse_args()

    q = a.quick
    cfg = argparse.Namespace(
        reps=a.reps or (2 if q else 5),
        xadd_n=500_000 if q else 2_000_000,
        half_load_s=5 if q else 10,
        workers=[int(x) for x in a.workers.split(",") if x.strip()],
        drain_n=a.drain_entries or (50_000 if q else 200_000),
        e2e_n=10_000,
        sidecar_n=30_000,
        sidecar_batches=[200, 500, 1000],
        latency_s=10 if q else 30,
        latency_rate=100,
        memory_n=200_000 if q else 1_000_000,
        memory_reps=1 if q else 2,
        restore_rows=2_000,
        cluster_n=30_000 if q else 200_000,
        cluster_reps=1 if q else 3,
        migrate_records=10_000,
        module_env=dict(kv.split("=", 1) for kv in a.module_env),
        baseline_module=os.path.abspath(a.baseline_module) if a.baseline_module else None,
        baseline_env=dict(kv.split("=", 1) for kv in a.baseline_env),
        profile=os.path.abspath(a.profile) if a.profile else None,
    )
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ITEMS]
    if unknown:
        p.error(f"unknown item(s) {unknown}; choose from {list(ITEMS)}")

    _redis_conf = list(a.redis_conf)
    _workdir = tempfile.mkdtemp(prefix="wb-bench-")
    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    # Absolute paths: the servers run in their own directories, where a relative one means nothing.
    tools = Tools(*(os.path.abspath(x) if os.sep in x else x
                    for x in (a.redis_server, a.module, a.python, a.migrate, a.xadd_load)))
    keys = os.path.join(_workdir, "keys")
    subprocess.run(["bash", os.path.join(REPO, "scripts/keygen"), keys], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run([tools.redis_server, "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {
        "mode": "quick" if q else "full",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "redis": version,
        "machine": machine(),
        "config": {k: v for k, v in vars(cfg).items()},
        "items": {},
    }
    t_all = time.monotonic()
    for name in only:
        log(f"== {name}")
        t = time.monotonic()
        try:
            results["items"][name] = ITEMS[name](tools, keys, cfg)
        except Exception as e:  # noqa: BLE001 - one failing item must not lose the others' figures
            log(f"{name} failed: {e}")
            results["items"][name] = {"error": str(e), "met": False}
        results["items"][name]["seconds"] = round(time.monotonic() - t, 1)
    results["seconds"] = round(time.monotonic() - t_all, 1)

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    ok = {k: v for k, v in results["items"].items() if "error" not in v}
    print(table({"items": ok}))
    for k, v in results["items"].items():
        if "error" in v:
            print(f"{k}: FAILED: {v['error']}")
    print(f"results: {a.out} ({results['seconds']:.0f} s)")
    return 1 if len(ok) < len(results["items"]) else 0


if __name__ == "__main__":
    sys.exit(main())
