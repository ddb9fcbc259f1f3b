"""The AIO state store protocol and broker behaviour, through paho-mqtt (MQTT v5), against
statenode's MQTT door. Usage: mqtt_statestore.py MQTT_HOST:PORT HTTP_HOST:PORT OTHER_MQTT_HOST:PORT
(the other MQTT address is another node's: sessions move between nodes)

Each check prints a line; the first failure raises (exit code 1) with what was seen.
Every wait is bounded."""

import socket
import sys
import threading
import time
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REQ = "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke"
NOTIFY = "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8"
HOST, PORT = sys.argv[1].rsplit(":", 1)
PORT = int(PORT)
HTTP = sys.argv[2]
OTHER_MQTT = sys.argv[3] if len(sys.argv) > 3 else None
TIMEOUT = 10


def hexup(b):
    return b.hex().upper()


def resp(*items):
    out = b"*%d\r\n" % len(items)
    for i in items:
        i = i if isinstance(i, bytes) else i.encode()
        out += b"$%d\r\n%s\r\n" % (len(i), i)
    return out


def now_hlc(offset_ms=0, node="pyclient"):
    return "%015d:%05d:%s" % (int(time.time() * 1000) + offset_ms, 0, node)


class Client:
    """A paho client that collects what it receives."""

    def __init__(self, cid, clean=True, expiry=300, will=None, keepalive=60, addr=None, auth=None):
        self.cid = cid
        self.msgs = []
        self.cond = threading.Condition()
        self.connack = None
        self.disconnect_rc = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.subacks = {}
        self.pubacks = {}
        if auth:
            self.c.username_pw_set(*auth)
        if will:
            self.c.will_set(will[0], will[1], qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        host, port = (addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1])) if addr else (HOST, PORT)
        self.c.connect(host, port, keepalive=keepalive, clean_start=clean, properties=props)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")

    def _on_connect(self, c, u, flags, rc, props):
        with self.cond:
            self.connack = (flags.session_present, rc)
            self.cond.notify_all()

    def _on_disconnect(self, c, u, flags, rc, props):
        with self.cond:
            self.disconnect_rc = rc
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, codes, props):
        with self.cond:
            self.subacks[mid] = [code.value for code in codes]
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, props):
        with self.cond:
            self.pubacks[mid] = rc.value
            self.cond.notify_all()

    def _on_message(self, c, u, m):
        with self.cond:
            self.msgs.append(m)
            self.cond.notify_all()

    def wait(self, pred, what, timeout=TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError("%s: timed out waiting for %s; got %r" % (self.cid, what, self.summary()))

    def summary(self):
        return [(m.topic, m.payload) for m in self.msgs]

    def sub(self, topic, qos=1):
        """Subscribes and waits for the SUBACK; its reason codes."""
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        self.wait(lambda: mid in self.subacks, "SUBACK for %s" % topic)
        return self.subacks[mid]

    def pub(self, topic, payload, props=None):
        """Publishes at QoS 1 and waits for the PUBACK; its reason code."""
        info = self.c.publish(topic, payload, qos=1, properties=props)
        self.wait(lambda: info.mid in self.pubacks, "PUBACK for %s" % topic)
        return self.pubacks[info.mid]

    def take(self, pred, what, timeout=TIMEOUT):
        """Waits for, removes and returns the first message matching pred."""
        found = []

        def ready():
            for m in self.msgs:
                if pred(m):
                    found.append(m)
                    return True
            return False

        self.wait(ready, what, timeout)
        with self.cond:
            self.msgs.remove(found[0])
        return found[0]

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


class StateStore(Client):
    """The state store client: requests with response topic and correlation data."""

    def __init__(self, cid, **kw):
        super().__init__(cid, **kw)
        self.resp_topic = "clients/%s/services/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke/response" % cid
        self.sub(self.resp_topic)
        self.sub("%s/%s/command/notify/+" % (NOTIFY, hexup(cid.encode())))

    def request(self, payload, ts=True, ft=None, corr=None, extra=(), content_type="application/octet-stream"):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.resp_topic
        corr = corr or uuid.uuid4().bytes
        props.CorrelationData = corr
        if content_type:
            props.ContentType = content_type
        props.MessageExpiryInterval = 10
        ups = [("__srcId", self.cid)]
        if ts:
            ups.append(("__ts", ts if isinstance(ts, str) else now_hlc()))
        ups.append(("__protVer", "1.0"))
        if ft:
            ups.append(("__ft", ft))
        ups.extend(extra)
        props.UserProperty = ups
        self.c.publish(REQ, payload, qos=1, properties=props)
        m = self.take(lambda m: m.topic == self.resp_topic and m.properties.CorrelationData == corr, "reply to %r" % payload)
        up = dict(m.properties.UserProperty)
        assert up.get("__stat") == "200", up
        assert up.get("__protVer") == "1.0", up
        return m.payload, up.get("__ts")

    def notification(self, key, what, timeout=TIMEOUT):
        topic = "%s/%s/command/notify/%s" % (NOTIFY, hexup(self.cid.encode()), hexup(key))
        m = self.take(lambda m: m.topic == topic, what, timeout)
        up = dict(m.properties.UserProperty)
        assert "__ts" in up, up
        return m.payload


def check(name, got, want):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (name, got, want))
    print("ok:", name)


def state_store_commands():
    s = StateStore("py-ss-1")
    check("KEYNOTIFY", s.request(resp("KEYNOTIFY", "k1"))[0], b"+OK\r\n")
    payload, ts1 = s.request(resp("SET", "k1", "v1", "NX", "PX", "30000"))
    check("SET NX applied", payload, b"+OK\r\n")
    assert ts1 and ts1.endswith(":statenode"), ts1
    check("notify SET", s.notification(b"k1", "SET notification"), resp("NOTIFY", "SET", "VALUE", "v1"))
    payload, ts2 = s.request(resp("SET", "k1", "v2", "NX", "PX", "30000"))
    check("SET NX not applied", payload, b":-1\r\n")
    check("not applied carries the current version", ts2, ts1)
    check("GET", s.request(resp("GET", "k1")), (b"$2\r\nv1\r\n", ts1))
    check("GET miss has no __ts", s.request(resp("GET", "nope")), (b"$-1\r\n", None))
    check("VDEL mismatch", s.request(resp("VDEL", "k1", "zzz"))[0], b":-1\r\n")
    check("DEL", s.request(resp("DEL", "k1"))[0], b":1\r\n")
    check("notify DELETE", s.notification(b"k1", "DELETE notification"), resp("NOTIFY", "DELETE"))
    check("DEL absent", s.request(resp("DEL", "k1"))[0], b":0\r\n")
    check("KEYNOTIFY STOP", s.request(resp("KEYNOTIFY", "k1", "STOP"))[0], b"+OK\r\n")
    check("KEYNOTIFY STOP again", s.request(resp("KEYNOTIFY", "k1", "STOP"))[0], b":0\r\n")
    # NEX: set if absent or still mine (a lease renewal).
    check("NEX acquire", s.request(resp("SET", "lease", "A", "NEX", "PX", "10000"))[0], b"+OK\r\n")
    check("NEX renew", s.request(resp("SET", "lease", "A", "NEX", "PX", "10000"))[0], b"+OK\r\n")
    check("NEX other holder", s.request(resp("SET", "lease", "B", "NEX"))[0], b":-1\r\n")
    check("VDEL holder", s.request(resp("VDEL", "lease", "A"))[0], b":1\r\n")
    # A repeated request (same correlation data) is answered, not applied again.
    corr = uuid.uuid4().bytes
    check("dedup first", s.request(resp("SET", "once", "x", "NX"), corr=corr)[0], b"+OK\r\n")
    check("dedup repeat", s.request(resp("SET", "once", "x", "NX"), corr=corr)[0], b"+OK\r\n")
    check("dedup other", s.request(resp("SET", "once", "x", "NX"))[0], b":-1\r\n")
    s.stop()


def fencing():
    s = StateStore("py-ss-fence")
    token = now_hlc(node="lease")
    check("SET with __ft", s.request(resp("SET", "fenced", "v"), ft=token)[0], b"+OK\r\n")
    check("SET same __ft", s.request(resp("SET", "fenced", "v2"), ft=token)[0], b"+OK\r\n")
    check("SET without __ft", s.request(resp("SET", "fenced", "v3"))[0],
          b"-ERR a fencing token is required for this request\r\n")
    old = "%015d:00000:lease" % (int(token.split(":")[0]) - 1000)
    check("SET older __ft", s.request(resp("SET", "fenced", "v3"), ft=old)[0],
          b"-ERR the request fencing token is a lower version than the fencing token protecting the resource\r\n")
    check("GET needs no __ft", s.request(resp("GET", "fenced"))[0], b"$2\r\nv2\r\n")
    check("DEL without __ft", s.request(resp("DEL", "fenced"))[0],
          b"-ERR a fencing token is required for this request\r\n")
    check("DEL with __ft", s.request(resp("DEL", "fenced"), ft=token)[0], b":1\r\n")
    s.stop()


def bad_requests():
    s = StateStore("py-ss-bad")
    check("unknown command", s.request(resp("FLY", "k"))[0], b"-ERR unknown command\r\n")
    check("wrong arity", s.request(resp("GET", "a", "b"))[0], b"-ERR wrong number of arguments\r\n")
    check("bad option", s.request(resp("SET", "k", "v", "XX"))[0], b"-ERR syntax error\r\n")
    check("not RESP3", s.request(b"GET k\r\n")[0], b"-ERR syntax error\r\n")
    check("empty key", s.request(resp("GET", ""))[0], b"-ERR the key length is zero\r\n")
    check("SET without __ts", s.request(resp("SET", "k", "v"), ts=False)[0], b"-ERR missing timestamp\r\n")
    check("malformed __ts", s.request(resp("SET", "k", "v"), ts="yesterday")[0], b"-ERR malformed timestamp\r\n")
    check("__ts in the future", s.request(resp("SET", "k", "v"), ts=now_hlc(120_000))[0],
          b"-ERR the request timestamp is too far in the future; ensure that the client and broker "
          b"system clocks are synchronized\r\n")
    s.stop()


def notifications_from_every_door():
    s = StateStore("py-ss-obs")
    s.request(resp("KEYNOTIFY", "via-http"))
    req = urllib.request.Request("http://%s/v1/kv/via-http" % HTTP, data=b"from-http", method="PUT")
    urllib.request.urlopen(req, timeout=TIMEOUT).read()
    check("HTTP write notifies", s.notification(b"via-http", "notification of an HTTP write"),
          resp("NOTIFY", "SET", "VALUE", "from-http"))
    s.request(resp("KEYNOTIFY", "ttl"))
    s.request(resp("SET", "ttl", "short", "PX", "500"))
    s.notification(b"ttl", "SET of the TTL key")
    start = time.time()
    check("TTL expiry notifies DELETE", s.notification(b"ttl", "DELETE on expiry", timeout=5), resp("NOTIFY", "DELETE"))
    print("  expiry notified %.2f s after the 0.5 s TTL" % (time.time() - start))
    s.stop()


def broker():
    sub = Client("py-sub")
    sub.sub("a/+/c")
    sub.sub("x/#")
    pub = Client("py-pub")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "1"), ("k", "2"), ("a", "3")]
    props.ResponseTopic = "reply/here"
    props.CorrelationData = b"\x00\x01"
    props.ContentType = "text/plain"
    pub.c.publish("a/b/c", b"hello", qos=1, properties=props).wait_for_publish(TIMEOUT)
    m = sub.take(lambda m: m.topic == "a/b/c", "a/b/c")
    check("payload", m.payload, b"hello")
    check("user properties kept in order, duplicates too", m.properties.UserProperty, [("k", "1"), ("k", "2"), ("a", "3")])
    check("response topic", m.properties.ResponseTopic, "reply/here")
    check("correlation data", m.properties.CorrelationData, b"\x00\x01")
    check("content type", m.properties.ContentType, "text/plain")
    pub.c.publish("x/y/z", b"deep", qos=0)
    check("# wildcard", sub.take(lambda m: m.topic == "x/y/z", "x/y/z").payload, b"deep")
    pub.c.publish("a/b/d", b"no", qos=1).wait_for_publish(TIMEOUT)
    pub.c.publish("r/1", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
    late = Client("py-late")
    late.sub("r/#")
    m = late.take(lambda m: m.topic == "r/1", "retained r/1")
    check("retained message to a new subscriber", (m.payload, m.retain), (b"kept", True))
    assert not any(m.topic == "a/b/d" for m in sub.msgs), sub.summary()
    # A will goes out when its client vanishes without DISCONNECT.
    sub.sub("will/#")
    doomed = Client("py-doomed", will=("will/doomed", b"gone"))
    doomed.c._sock.close()  # the connection drops: no DISCONNECT
    check("will message", sub.take(lambda m: m.topic == "will/doomed", "will").payload, b"gone")
    doomed.c.loop_stop()
    for c in (sub, pub, late):
        c.stop()


def sessions():
    a = Client("py-sess", clean=False, expiry=60)
    a.sub("s/#")
    a.stop()
    pub = Client("py-sess-pub")
    pub.c.publish("s/1", b"while away", qos=1).wait_for_publish(TIMEOUT)
    b = Client("py-sess", clean=False, expiry=60)
    check("session present on resume", b.connack[0], True)
    check("queued while offline", b.take(lambda m: m.topic == "s/1", "queued s/1").payload, b"while away")
    # Another connection with the same client id takes the session over.
    c = Client("py-sess", clean=False, expiry=60)
    b.wait(lambda: b.disconnect_rc is not None, "DISCONNECT on take-over")
    check("take-over reason", b.disconnect_rc.value, 0x8E)
    check("take-over session present", c.connack[0], True)
    b.c.loop_stop()
    fresh = Client("py-sess-new", clean=False, expiry=60)
    check("new session not present", fresh.connack[0], False)
    for x in (c, pub, fresh):
        x.stop()


def sessions_across_nodes():
    """Sessions are replicated: resumed on another node with their subscriptions and
    KEYNOTIFY registrations, taken over across nodes, and expired cluster-wide."""
    a = StateStore("py-roam", clean=False, expiry=60)
    a.sub("roam/#")
    a.request(resp("KEYNOTIFY", "roam-key"))
    # The same client id connects to another node: the session moves there.
    b = Client("py-roam", clean=False, expiry=60, addr=OTHER_MQTT)
    a.wait(lambda: a.disconnect_rc is not None, "DISCONNECT on take-over from another node")
    check("take-over from another node", a.disconnect_rc.value, 0x8E)
    a.c.loop_stop()
    check("session present on another node", b.connack[0], True)
    pub = Client("py-roam-pub", addr=OTHER_MQTT)
    pub.c.publish("roam/1", b"there", qos=1).wait_for_publish(TIMEOUT)
    check("subscription resumed on another node", b.take(lambda m: m.topic == "roam/1", "roam/1").payload, b"there")
    req = urllib.request.Request("http://%s/v1/kv/roam-key" % HTTP, data=b"moved", method="PUT")
    urllib.request.urlopen(req, timeout=TIMEOUT).read()
    topic = "%s/%s/command/notify/%s" % (NOTIFY, hexup(b"py-roam"), hexup(b"roam-key"))
    check("KEYNOTIFY resumed on another node", b.take(lambda m: m.topic == topic, "notification").payload,
          resp("NOTIFY", "SET", "VALUE", "moved"))
    b.stop()
    back = Client("py-roam", clean=False, expiry=60)
    check("session present back on the first node", back.connack[0], True)
    back.stop()
    fresh = Client("py-roam", clean=True, expiry=1, addr=OTHER_MQTT)
    check("clean start: no session", fresh.connack[0], False)
    fresh.stop()
    time.sleep(2.5)  # the 1 s expiry runs out; the leader's reaper ends it cluster-wide
    gone = Client("py-roam", clean=False, expiry=60)
    check("expired session not present on another node", gone.connack[0], False)
    gone.stop()
    pub.stop()


def publish_across_nodes():
    """A publish reaches the subscribers on every node; a retained message, every node."""
    there = Client("py-x-sub", expiry=0, addr=OTHER_MQTT)
    there.sub("x-node/#")
    away = Client("py-x-away", clean=False, expiry=60, addr=OTHER_MQTT)
    away.sub("x-node/#")
    away.stop()
    here = Client("py-x-pub")
    check("PUBACK", here.pub("x-node/1", b"across"), 0)
    check("delivered on another node", there.take(lambda m: m.topic == "x-node/1", "x-node/1").payload, b"across")
    back = Client("py-x-away", clean=False, expiry=60, addr=OTHER_MQTT)
    check("queued on another node for a client away", back.take(lambda m: m.topic == "x-node/1", "queued").payload,
          b"across")
    here.c.publish("x-ret/1", b"kept everywhere", qos=1, retain=True).wait_for_publish(TIMEOUT)
    time.sleep(0.5)  # relayed in the background
    late = Client("py-x-late", addr=OTHER_MQTT)
    late.sub("x-ret/#")
    m = late.take(lambda m: m.topic == "x-ret/1", "retained x-ret/1 on another node")
    check("retained on another node", (m.payload, m.retain), (b"kept everywhere", True))
    for c in (there, back, here, late):
        c.stop()


def retries_across_nodes():
    """A write retried through another node after its client moved there (same __ts, same
    correlation data) is answered from the replicated dedup table, not applied again."""
    a = StateStore("py-retry", clean=False, expiry=60)
    ts, corr = now_hlc(node="py-retry"), uuid.uuid4().bytes
    first = a.request(resp("SET", "retried", "once"), ts=ts, corr=corr)
    a.stop()
    b = StateStore("py-retry", clean=False, expiry=60, addr=OTHER_MQTT)
    check("a retry through another node answers as the first time",
          b.request(resp("SET", "retried", "once"), ts=ts, corr=corr), first)
    check("and applies once", b.request(resp("GET", "retried"))[1], first[1])
    ts = now_hlc(node="py-retry")
    deleted = b.request(resp("DEL", "retried"), ts=ts, corr=b"del-1")
    b.stop()
    c = StateStore("py-retry", clean=False, expiry=60)
    check("a retried DEL answers as the first time", c.request(resp("DEL", "retried"), ts=ts, corr=b"del-1"), deleted)
    c.stop()


def qos2_is_refused():
    c = Client("py-qos2")
    c.c.publish("q/2", b"x", qos=2)
    c.wait(lambda: c.disconnect_rc is not None, "DISCONNECT for QoS 2")
    check("QoS 2 refused", c.disconnect_rc.value, 0x9B)
    c.c.loop_stop()


def main():
    for step in (state_store_commands, fencing, bad_requests, notifications_from_every_door, broker, sessions,
                 sessions_across_nodes, retries_across_nodes, publish_across_nodes, qos2_is_refused):
        print("--", step.__name__)
        step()
    print("all MQTT checks passed")


if __name__ == "__main__":
    main()
