#!/usr/bin/env python3
"""The three-node compose cluster under real failures (run by .ci/run).

    deploy/build-image.sh && python3 deploy/compose/test.py

Brings deploy/compose up under a project name of its own, writes through HTTP all along
(one writer, a new key per write, each acknowledged write remembered) and through MQTT (the
AIO state store's SET and GET) at every step, and after each step checks that every
acknowledged write is still readable, with its value:

  1. kill -9 the leader's container: writes go on through the two others; it restarts and
     catches up;
  2. cut one node (the leader) off the peer network: the majority serves, the cut node
     refuses linearizable reads and writes; reconnected, it converges;
  3. stop all three, start two: they serve everything; the third comes back and catches up;
  4. give one node an empty volume: it refuses to start as its old self, then, started with
     STATENODE_REPLACE_LOST_MEMBER=true, joins under a new id and the old entry goes;
  5. a rolling restart, one node at a time, waiting for /readyz;
  6. tear down, leaving no container, network or volume behind.

Prints the time from `up` to a serving cluster and the longest gap between acknowledged
writes (the write-unavailability window) around each failure. Every wait is bounded; the
first failed check raises (exit code 1) after tearing down."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = os.path.dirname(os.path.abspath(__file__))
FILE = os.path.join(HERE, "docker-compose.yml")
PROJECT = "sntest%d" % os.getpid()
SERVICES = ["statenode-0", "statenode-1", "statenode-2"]
REQ = "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke"
T0 = time.monotonic()


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def run(*cmd, env=None, check=True):
    e = dict(os.environ, **(env or {}))
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=180)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return r.stdout.strip()


def compose(*args, env=None, check=True):
    return run("docker-compose", "-f", FILE, "-p", PROJECT, *args, env=env, check=check)


def container(svc):
    return "%s_%s_1" % (PROJECT, svc)


def client_ip(svc):
    fmt = '{{with index .NetworkSettings.Networks "%s_client"}}{{.IPAddress}}{{end}}' % PROJECT
    return run("docker", "inspect", "-f", fmt, container(svc))


def wait_for(what, cond, timeout=60, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
        except (OSError, ValueError, RuntimeError):
            v = None
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))


def http(svc, method, path, body=None, timeout=3.0):
    """(status, body bytes), or (None, error) when the node did not answer."""
    try:
        ip = client_ip(svc)
    except RuntimeError as e:
        return None, str(e)
    req = urllib.request.Request("http://%s:3500%s" % (ip, path), data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError) as e:
        return None, str(e)


def ready(svc):
    return http(svc, "GET", "/readyz")[0] == 200


def status(svc):
    code, body = http(svc, "GET", "/v1/cluster")
    return json.loads(body) if code == 200 else None


def leader_service():
    """The service whose node leads, as the cluster says (its peer address names it)."""
    for svc in SERVICES:
        s = status(svc)
        if s and s.get("leader_id"):
            for m in s["members"]:
                if m["id"] == s["leader_id"]:
                    return m["peer_addr"].split(".")[0]
    return None


def list_all(svc, consistency="linearizable"):
    """Every key with its value, through `svc`, page by page."""
    out, cursor = {}, ""
    for _ in range(1000):
        q = "/v1/kv?prefix=&limit=1000&consistency=%s&cursor=%s" % (consistency, urllib.request.quote(cursor))
        code, body = http(svc, "GET", q, timeout=10)
        if code != 200:
            raise RuntimeError("list through %s: %s %r" % (svc, code, body[:200]))
        page = json.loads(body)
        for kv in page["kvs"]:
            out[kv["key"]] = kv["value"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return out
    raise RuntimeError("list through %s did not end" % svc)


class Writer(threading.Thread):
    """One client writing a new key per request, round robin over the nodes it is told are
    up, remembering each acknowledged write and when it was acknowledged."""

    def __init__(self):
        super().__init__(daemon=True)
        self.targets = list(SERVICES)
        self.acked = {}
        self.ack_times = []
        self.failures = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.paused = threading.Event()

    def run(self):
        n = 0
        while not self.stopped.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                continue
            with self.lock:
                targets = list(self.targets)
            svc = targets[n % len(targets)]
            key, value = "w-%06d" % n, "value-%d-%s" % (n, uuid.uuid4().hex[:8])
            n += 1
            code, _ = http(svc, "PUT", "/v1/kv/" + key, value.encode(), timeout=2.0)
            if code == 200:
                with self.lock:
                    self.acked[key] = value
                    self.ack_times.append(time.monotonic())
            else:
                self.failures += 1
                time.sleep(0.05)

    def set_targets(self, targets):
        with self.lock:
            self.targets = list(targets)

    def snapshot(self):
        with self.lock:
            return dict(self.acked)

    def acks(self):
        with self.lock:
            return len(self.ack_times)

    def longest_gap(self, since):
        """The longest time without an acknowledged write from `since` to now."""
        with self.lock:
            times = [t for t in self.ack_times if t >= since] + [time.monotonic()]
        gaps, prev = [], since
        for t in times:
            gaps.append(t - prev)
            prev = t
        return max(gaps)

    def wait_acks(self, more, timeout=30):
        target = self.acks() + more
        wait_for("%d more acknowledged writes" % more, lambda: self.acks() >= target, timeout)


def mqtt_call(svc, payload, timeout=10):
    """One AIO state store request over MQTT v5 to `svc`: the RESP3 reply."""
    cid = "compose-" + uuid.uuid4().hex[:8]
    reply_topic = "clients/%s/reply" % cid
    got, done = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)

    def on_message(_c, _u, m):
        got.append(m.payload)
        done.set()

    c.on_message = on_message
    c.connect(client_ip(svc), 1883, keepalive=30)
    c.loop_start()
    try:
        c.subscribe(reply_topic, qos=1)
        time.sleep(0.2)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = uuid.uuid4().bytes
        props.ContentType = "application/octet-stream"
        hlc = "%015d:%05d:%s" % (int(time.time() * 1000), 0, cid)  # the client's clock, as the SDK sends it
        props.UserProperty = [("__protVer", "1.0"), ("__srcId", cid), ("__ts", hlc)]
        c.publish(REQ, payload, qos=1, properties=props)
        if not done.wait(timeout):
            raise AssertionError("no MQTT reply from %s to %r" % (svc, payload))
        return got[0]
    finally:
        c.loop_stop()
        c.disconnect()


def resp(*items):
    out = b"*%d\r\n" % len(items)
    for i in items:
        i = i.encode()
        out += b"$%d\r\n%s\r\n" % (len(i), i)
    return out


class Cluster:
    def __init__(self):
        self.writer = Writer()
        self.mqtt_keys = {}

    def check_all(self, through, what):
        """Every acknowledged write (HTTP and MQTT) reads back, linearizably, through `through`."""
        acked = self.writer.snapshot()
        acked.update(self.mqtt_keys)
        seen = list_all(through)
        lost = [k for k, v in acked.items() if seen.get(k) != v]
        assert not lost, "%s: %d acknowledged writes lost or changed, e.g. %s" % (what, len(lost), lost[:5])
        log("%s: all %d acknowledged writes read back through %s" % (what, len(acked), through))

    def caught_up(self, svc, what):
        """`svc` holds every acknowledged write in its own state machine (a stale read)."""
        acked = self.writer.snapshot()
        acked.update(self.mqtt_keys)

        def has_all():
            seen = list_all(svc, "stale")
            return all(seen.get(k) == v for k, v in acked.items())

        wait_for("%s to catch up" % svc, has_all, timeout=60, every=0.5)
        log("%s: %s caught up (%d writes)" % (what, svc, len(acked)))

    def mqtt_write(self, svc, what):
        key, value = "m-" + uuid.uuid4().hex[:10], uuid.uuid4().hex
        got = mqtt_call(svc, resp("SET", key, value))
        assert got == b"+OK\r\n", "MQTT SET through %s: %r" % (svc, got)
        self.mqtt_keys[key] = value
        # Read it (and an earlier one) back through MQTT on the same node.
        for k in list(self.mqtt_keys)[-2:]:
            v = self.mqtt_keys[k]
            got = mqtt_call(svc, resp("GET", k))
            assert got == b"$%d\r\n%s\r\n" % (len(v), v.encode()), "MQTT GET %s through %s: %r" % (k, svc, got)
        log("%s: MQTT SET and GET through %s" % (what, svc))

    def wait_ready(self, services, timeout=90):
        for svc in services:
            wait_for("%s /readyz" % svc, lambda: ready(svc), timeout)


def stop_all():
    """Stops the three containers at once (SIGTERM, SIGKILL after 20 s); a node that takes
    over 10 s to stop on SIGTERM fails the test."""
    took = {}

    def stop(svc):
        t = time.monotonic()
        run("docker", "stop", "-t", "20", container(svc))
        took[svc] = time.monotonic() - t

    threads = [threading.Thread(target=stop, args=(s,)) for s in SERVICES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log("stopped all three: %s" % ", ".join("%s %.1fs" % (s, took[s]) for s in SERVICES))
    slow = [s for s in SERVICES if took[s] > 10]
    assert not slow, "%s did not stop within 10 s of SIGTERM" % slow


def refuses(svc, method, path, body=None):
    """The node does not acknowledge: an error status or no answer within 5 s."""
    t = time.monotonic()
    code, _ = http(svc, method, path, body, timeout=5.0)
    log("%s %s on the cut-off node: %s after %.1fs" % (method, path, code or "no answer", time.monotonic() - t))
    return code is None or code >= 500


def main():
    c = Cluster()
    w = c.writer
    figures = {}

    # --- up
    start = time.monotonic()
    compose("up", "-d")
    c.wait_ready(SERVICES, timeout=120)
    wait_for("a first write", lambda: http("statenode-0", "PUT", "/v1/kv/first", b"1")[0] == 200)
    figures["compose up to serving"] = time.monotonic() - start
    log("cluster serving %.1fs after compose up" % figures["compose up to serving"])
    w.start()
    w.wait_acks(50)
    c.mqtt_write("statenode-1", "up")
    c.check_all("statenode-2", "up")

    # --- 1. kill the leader
    leader = wait_for("a leader", leader_service)
    others = [s for s in SERVICES if s != leader]
    w.set_targets(others)
    t = time.monotonic()
    run("docker", "kill", container(leader))
    log("killed the leader %s" % leader)
    w.wait_acks(100, timeout=30)
    figures["leader kill: longest write gap"] = w.longest_gap(t)
    c.mqtt_write(others[0], "leader killed")
    c.check_all(others[1], "leader killed")
    compose("start", leader)
    c.wait_ready([leader])
    c.caught_up(leader, "killed leader back")
    w.set_targets(SERVICES)
    c.check_all(leader, "killed leader back")

    # --- 2. partition the leader from its peers
    leader = wait_for("a leader", leader_service)
    others = [s for s in SERVICES if s != leader]
    w.set_targets(others)
    t = time.monotonic()
    run("docker", "network", "disconnect", "%s_peer" % PROJECT, container(leader))
    log("cut %s (the leader) off the peer network" % leader)
    w.wait_acks(100, timeout=30)
    figures["leader partitioned: longest write gap"] = w.longest_gap(t)
    assert refuses(leader, "PUT", "/v1/kv/minority", b"x"), "the cut-off node acknowledged a write"
    assert refuses(leader, "GET", "/v1/kv/first"), "the cut-off node served a linearizable read"
    assert http(leader, "GET", "/v1/kv/first?consistency=stale")[0] == 200, "stale reads stay local"
    log("the cut-off node refuses writes and linearizable reads, serves stale reads")
    c.mqtt_write(others[0], "partition")
    c.check_all(others[1], "partition")
    alias = "%s.statenode-peer" % leader
    run("docker", "network", "connect", "--alias", alias, "%s_peer" % PROJECT, container(leader))
    c.wait_ready([leader])
    c.caught_up(leader, "partition healed")
    assert http(leader, "GET", "/v1/kv/minority")[0] == 404, "the refused write must not exist"
    w.set_targets(SERVICES)
    c.check_all(leader, "partition healed")

    # --- 3. full outage; only two come back, then the third
    w.paused.set()
    time.sleep(2.5)  # let a write in flight finish or fail
    stop_all()
    t = time.monotonic()
    compose("start", "statenode-0", "statenode-1")
    c.wait_ready(["statenode-0", "statenode-1"])
    figures["two of three restarted: serving after"] = time.monotonic() - t
    c.check_all("statenode-1", "two of three after a full stop")
    w.set_targets(["statenode-0", "statenode-1"])
    w.paused.clear()
    w.wait_acks(50)
    c.mqtt_write("statenode-0", "two of three")
    compose("start", "statenode-2")
    c.wait_ready(["statenode-2"])
    c.caught_up("statenode-2", "third back")
    w.set_targets(SERVICES)
    c.check_all("statenode-2", "third back")

    # --- 4. one node's volume replaced by an empty one
    leader = wait_for("a leader", leader_service)
    lost = [s for s in SERVICES if s != leader][-1]
    old_id = status(lost)["id"]
    w.set_targets([s for s in SERVICES if s != lost])
    compose("rm", "-f", "-s", lost)
    run("docker", "volume", "rm", "%s_data-%s" % (PROJECT, lost[-1]))
    compose("up", "-d", "--no-deps", lost)
    code = wait_for(
        "%s to stop" % lost,
        lambda: run("docker", "inspect", "-f", "{{if not .State.Running}}exited {{.State.ExitCode}}{{end}}", container(lost)),
    )
    assert code == "exited 1", "a node with an empty volume must refuse to start, not: %s" % code
    out = subprocess.run(["docker", "logs", container(lost)], capture_output=True, text=True, timeout=30)
    assert "data is gone" in out.stdout + out.stderr, "the lost-disk error names the fix"
    log("%s with an empty volume refused to start as node %d (lost-disk error)" % (lost, old_id))
    c.check_all(leader, "lost volume, two serving")
    env = {"REPLACE_LOST_MEMBER_%s" % lost[-1]: "true"}
    compose("up", "-d", "--no-deps", lost, env=env)
    c.wait_ready([lost])

    def replaced():
        s = status(leader)
        ids = {m["id"] for m in s["members"] if m["voter"]} if s else set()
        return len(ids) == 3 and old_id not in ids and ids

    voters = wait_for("the replacement to be a voter and node %d gone" % old_id, replaced, timeout=60)
    log("%s replaced node %d; voters now %s" % (lost, old_id, sorted(voters)))
    c.caught_up(lost, "lost volume replaced")
    w.set_targets(SERVICES)
    c.check_all(lost, "lost volume replaced")

    # --- 5. rolling restart
    gaps = []
    for svc in SERVICES:
        w.set_targets([s for s in SERVICES if s != svc])
        t = time.monotonic()
        run("docker", "restart", "-t", "20", container(svc))
        c.wait_ready([svc])
        w.set_targets(SERVICES)
        w.wait_acks(30)
        gaps.append(w.longest_gap(t))
        log("restarted %s (longest write gap %.2fs)" % (svc, gaps[-1]))
    figures["rolling restart: longest write gap"] = max(gaps)
    c.mqtt_write("statenode-2", "rolling restart")
    c.check_all("statenode-0", "rolling restart")

    w.stopped.set()
    w.join(5)
    log("%d writes acknowledged, %d failed or refused (each unacknowledged)" % (w.acks(), w.failures))
    for k, v in figures.items():
        log("%-40s %.2fs" % (k, v))


def leftovers():
    label = "label=com.docker.compose.project=%s" % PROJECT
    return {
        "containers": run("docker", "ps", "-aq", "--filter", label, check=False),
        "networks": run("docker", "network", "ls", "-q", "--filter", label, check=False),
        "volumes": run("docker", "volume", "ls", "-q", "--filter", label, check=False),
    }


if __name__ == "__main__":
    ok = False
    try:
        main()
        ok = True
    finally:
        if not ok:
            for svc in SERVICES:
                out = subprocess.run(["docker", "logs", "--tail", "15", container(svc)], capture_output=True, text=True)
                print("--- %s\n%s%s" % (svc, out.stdout, out.stderr[-3000:]), file=sys.stderr)
        compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
        left = {k: v for k, v in leftovers().items() if v}
        if left:
            print("left behind: %s" % left, file=sys.stderr)
            sys.exit(1)
        log("torn down: no container, network or volume left")
