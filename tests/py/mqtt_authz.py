"""Per-key and per-topic authorization (the AIO broker's model) through paho-mqtt, against a
node started with tests/py/authz.toml and an API token (the operator's: the rules bound the
HTTP door too, and a request naming nobody may touch no key).
Usage: mqtt_authz.py MQTT_HOST:PORT HTTP_HOST:PORT API_TOKEN

Each check prints a line; the first failure raises (exit code 1)."""

import sys
import urllib.request

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_statestore import HTTP, REQ, TIMEOUT, Client, StateStore, check, resp


def refused(cid, auth=None):
    """Connects and returns the CONNACK reason code of a refused connection."""
    c = Client(cid, auth=auth)
    c.c.loop_stop()
    c.c.disconnect()
    return c.connack[1].value


def main():
    check("no rule lets it connect: 0x87", refused("intruder"), 0x87)
    check("wrong password: 0x86", refused("anyone", auth=("alice", "nope")), 0x86)
    check("unknown user: 0x86", refused("anyone", auth=("mallory", "wonderland")), 0x86)

    r = StateStore("reader-1")
    check("read allowed", r.request(resp("GET", "shared/a"))[0], b"$-1\r\n")
    check("write denied", r.request(resp("SET", "shared/a", "x"))[0], b"-ERR not authorized\r\n")
    check("delete denied", r.request(resp("DEL", "shared/a"))[0], b"-ERR not authorized\r\n")
    check("own keys writable", r.request(resp("SET", "own/reader-1/k", "mine"))[0], b"+OK\r\n")
    check("own keys readable", r.request(resp("GET", "own/reader-1/k"))[0], b"$4\r\nmine\r\n")
    check("another principal's keys", r.request(resp("GET", "own/reader-2/k"))[0], b"-ERR not authorized\r\n")
    check("observe allowed keys", r.request(resp("KEYNOTIFY", "shared/a"))[0], b"+OK\r\n")
    check("observe denied keys", r.request(resp("KEYNOTIFY", "secret"))[0], b"-ERR not authorized\r\n")
    req = urllib.request.Request("http://%s/v1/kv/shared/a" % HTTP, data=b"from-http", method="PUT",
                                 headers={"dapr-api-token": sys.argv[3]})
    urllib.request.urlopen(req, timeout=TIMEOUT).read()
    check("notified of an allowed key", r.notification(b"shared/a", "notification"),
          resp("NOTIFY", "SET", "VALUE", "from-http"))
    check("subscribe outside the rules: 0x87", r.sub("secret/#"), [0x87])
    check("subscribe inside the rules", r.sub("data/#"), [1])
    check("publish outside the rules: 0x87", r.pub("secret/x", b"no"), 0x87)
    check("publish inside the rules", r.pub("data/reader-1/t", b"yes"), 0)
    check("delivered", r.take(lambda m: m.topic == "data/reader-1/t", "data/reader-1/t").payload, b"yes")
    check("publish to another client's topic: 0x87", r.pub("data/reader-2/t", b"no"), 0x87)
    steer = Properties(PacketTypes.PUBLISH)
    steer.ResponseTopic = "data/reader-2/t"
    steer.CorrelationData = b"steer"
    check("a reply only where the client may publish: 0x87", r.pub(REQ, resp("GET", "shared/a"), steer), 0x87)
    check("a subscription must sit inside a rule's filter", r.sub("clients/+/x"), [0x87])
    r.stop()

    a = StateStore("any-id", auth=("alice", "wonderland"))
    check("a verified username's rule", a.request(resp("SET", "alice/k", "v"))[0], b"+OK\r\n")
    check("and only its own", a.request(resp("SET", "own/any-id/k", "v"))[0], b"-ERR not authorized\r\n")
    a.stop()
    print("all MQTT authorization checks passed")


if __name__ == "__main__":
    main()
