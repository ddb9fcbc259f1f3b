#!/usr/bin/env python3
"""statenode against etcd, side by side in one run, on this machine's loopback.

    python3 tests/bench/vs_etcd.py [--duration 10] [--runs 2] [--mode disk|memory]

Installs etcd (Debian's etcd-server, etcd-client) and wrk if missing, builds statenode
(release), starts three etcd members and three statenode nodes on 127.0.0.1, and drives each
one's HTTP API with the same wrk load: 256-byte values over 10,000 keys, every request to
the leader, for put / linearizable get / stale (serializable) get at 1, 16 and 64
connections, the two systems interleaved run by run. Prints one table: ops/s, p50, p99, and
the CPU time of all server processes per operation, with the statenode/etcd ratio.

etcd: POST /v3/kv/put and /v3/kv/range (JSON, base64), `serializable` for stale reads.
statenode: PUT /v1/kv/{key}, GET /v1/kv/{key}[?consistency=stale]. Every process it starts
is stopped at the end (by PID); data lives in a temporary directory."""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEYS = 10_000
VALUE = "v" * 256
TICK = os.sysconf("SC_CLK_TCK")
STARTED = []  # every server process, stopped at the end whatever happens


def spawn(args, log, env=None):
    p = subprocess.Popen(args, stdout=log, stderr=log, env=env)
    STARTED.append(p)
    return p


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def install(build):
    missing = [p for p, b in [("etcd-server", "etcd"), ("etcd-client", "etcdctl"), ("wrk", "wrk")] if not shutil.which(b)]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    if build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "statenode", "--bin", "statenode"], cwd=ROOT, check=True)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def all_running(procs, what):
    dead = [p.args[0] for p in procs if p.poll() is not None]
    if dead:
        raise SystemExit("%s exited at start (a port in use?): see its log in the temporary directory" % what)


def http_json(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
        return json.loads(r.read())


def wait(what, cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = cond()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for " + what)


class Etcd:
    name = "etcd"

    def __init__(self, tmp):
        self.procs = []
        cluster = ",".join("e%d=http://127.0.0.1:%d" % (i, 23800 + i) for i in range(3))
        for i in range(3):
            args = [
                "etcd", "--name", "e%d" % i, "--data-dir", os.path.join(tmp, "etcd%d" % i),
                "--listen-client-urls", "http://127.0.0.1:%d" % (23790 + i),
                "--advertise-client-urls", "http://127.0.0.1:%d" % (23790 + i),
                "--listen-peer-urls", "http://127.0.0.1:%d" % (23800 + i),
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % (23800 + i),
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench-%d" % os.getpid(),
            ]
            log = open(os.path.join(tmp, "etcd%d.log" % i), "w")
            self.procs.append(spawn(args, log))
        self.leader = wait("an etcd leader", self.find_leader)
        all_running(self.procs, "etcd")

    def find_leader(self):
        for i in range(3):
            s = http_json("http://127.0.0.1:%d/v3/maintenance/status" % (23790 + i), {})
            if s.get("leader") and s["leader"] == s["header"]["member_id"]:
                return "127.0.0.1:%d" % (23790 + i)
        return None

    def script(self, op):
        keys = ",".join('"%s"' % base64.b64encode(b"k%d" % i).decode() for i in range(KEYS))
        value = base64.b64encode(VALUE.encode()).decode()
        if op == "put":
            body = '\'{"key":"\' .. k .. \'","value":"%s"}\'' % value
            path = "/v3/kv/put"
        else:
            extra = ',"serializable":true' if op == "stale" else ""
            body = '\'{"key":"\' .. k .. \'"%s}\'' % extra
            path = "/v3/kv/range"
        return LUA % {"keys": keys, "request": 'wrk.format("POST", "%s", nil, %s)' % (path, body)}


class Statenode:
    name = "statenode"

    def __init__(self, tmp, memory, binary):
        self.procs = []
        peers = ",".join("%d=127.0.0.1:%d" % (i + 1, 27000 + i) for i in range(3))
        for i in range(3):
            args = [
                binary, "serve", "--id", str(i + 1), "--data-dir", os.path.join(tmp, "sn%d" % i),
                "--peer-listen", "127.0.0.1:%d" % (27000 + i), "--grpc", "127.0.0.1:%d" % (27100 + i),
                "--http", "127.0.0.1:%d" % (27200 + i), "--mqtt", "127.0.0.1:%d" % (27300 + i),
                "--bootstrap-expect", "3", "--peers", peers,
            ] + (["--memory"] if memory else [])
            log = open(os.path.join(tmp, "sn%d.log" % i), "w")
            self.procs.append(spawn(args, log, dict(os.environ, RUST_LOG="warn")))
        self.leader = wait("a statenode leader", self.find_leader)
        all_running(self.procs, "statenode")

    def find_leader(self):
        s = http_json("http://127.0.0.1:27200/v1/cluster")
        if s.get("leader_id"):
            return "127.0.0.1:%d" % (27200 + s["leader_id"] - 1)
        return None

    def script(self, op):
        keys = ",".join('"k%d"' % i for i in range(KEYS))
        if op == "put":
            req = 'wrk.format("PUT", "/v1/kv/" .. k, nil, "%s")' % VALUE
        else:
            q = "?consistency=stale" if op == "stale" else ""
            req = 'wrk.format("GET", "/v1/kv/" .. k .. "%s")' % q
        return LUA % {"keys": keys, "request": req}


LUA = """
local keys = {%(keys)s}
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function() math.randomseed(os.time() * 100 + seed) end
request = function()
  local k = keys[math.random(1, #keys)]
  return %(request)s
end
"""


def parse_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        raise SystemExit("unreadable wrk latency %r" % s)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60000}[m.group(2)]


def run_wrk(system, op, conns, duration, tmp):
    path = os.path.join(tmp, "%s-%s.lua" % (system.name, op))
    with open(path, "w") as f:
        f.write(system.script(op))
    threads = min(conns, 2)
    pids = [p.pid for p in system.procs]
    cpu0 = cpu_seconds(pids)
    out = sh("wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency", "-s", path, "http://" + system.leader)
    cpu = cpu_seconds(pids) - cpu0
    if "Requests/sec" not in out:
        raise SystemExit("wrk said:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return {"rps": rps, "p50": p50, "p99": p99, "cpu_us": cpu * 1e6 / max(total, 1), "errors": int(errors.group(1)) if errors else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--mode", choices=["disk", "memory"], default="disk")
    ap.add_argument("--ops", default="put,get,stale")
    ap.add_argument("--conns", default="1,16,64")
    ap.add_argument("--statenode-bin", help="a statenode binary to run instead of this checkout's release build (to compare builds)")
    a = ap.parse_args()
    install(build=not a.statenode_bin)
    binary = a.statenode_bin or os.path.join(ROOT, "target", "release", "statenode")
    tmp = tempfile.mkdtemp(prefix="vs-etcd-")
    try:
        systems = [Etcd(tmp), Statenode(tmp, a.mode == "memory", binary)]
        # Fill every key once, so reads find values.
        for s in systems:
            run_wrk(s, "put", 16, 3, tmp)
        rows = []
        for op in a.ops.split(","):
            for conns in [int(c) for c in a.conns.split(",")]:
                results = {s.name: [] for s in systems}
                for _ in range(a.runs):
                    for s in systems:  # interleaved
                        results[s.name].append(run_wrk(s, op, conns, a.duration, tmp))
                rows.append((op, conns, results))
                e, n = results["etcd"], results["statenode"]
                print("%-5s c=%-3d etcd %s | statenode %s" % (op, conns, fmt_runs(e), fmt_runs(n)), flush=True)
        print()
        print("| workload | etcd ops/s | statenode (%s) ops/s | ratio | etcd p50 / p99 ms | statenode p50 / p99 ms | CPU µs/op etcd / statenode |" % a.mode)
        print("|---|---|---|---|---|---|---|")
        for op, conns, r in rows:
            e, n = r["etcd"], r["statenode"]
            avg = lambda rs, k: sum(x[k] for x in rs) / len(rs)
            print("| %s, c=%d | %s | %s | %.2f× | %.2f / %.2f | %.2f / %.2f | %.0f / %.0f |" % (
                {"put": "durable put" if a.mode == "disk" else "put", "get": "linearizable get", "stale": "stale get"}[op], conns,
                " / ".join("%.0f" % x["rps"] for x in e), " / ".join("%.0f" % x["rps"] for x in n),
                avg(n, "rps") / avg(e, "rps"), avg(e, "p50"), avg(e, "p99"), avg(n, "p50"), avg(n, "p99"),
                avg(e, "cpu_us"), avg(n, "cpu_us")))
        errors = sum(x["errors"] for _, _, r in rows for rs in r.values() for x in rs)
        if errors:
            print("\nnon-2xx answers during the runs: %d" % errors)
    finally:
        for p in STARTED:
            p.send_signal(signal.SIGTERM)
        for p in STARTED:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def fmt_runs(rs):
    return " / ".join("%.0f ops/s p50 %.2fms" % (x["rps"], x["p50"]) for x in rs)


if __name__ == "__main__":
    sys.exit(main())
