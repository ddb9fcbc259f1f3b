"""MQTT over TLS with paho-mqtt: a client trusting the cluster CA connects and gets its own
message back through the broker; one speaking plaintext to the same port never gets a CONNACK.
Usage: mqtt_tls.py MQTT_HOST:PORT CA_FILE"""

import queue
import socket
import sys

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1].rsplit(":", 1)
PORT = int(PORT)
CA = sys.argv[2]
TIMEOUT = 10


def main():
    got = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-1", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=CA)
    c.on_connect = lambda cl, ud, flags, rc, props: got.put(("connack", rc.value))
    c.on_subscribe = lambda cl, ud, mid, rcs, props: got.put(("suback", [r.value for r in rcs]))
    c.on_message = lambda cl, ud, msg: got.put(("message", msg.topic, msg.payload))
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    assert got.get(timeout=TIMEOUT) == ("connack", 0), "no CONNACK over TLS"
    print("connected over TLS")
    c.subscribe("tls/#", qos=1)
    assert got.get(timeout=TIMEOUT)[0] == "suback"
    c.publish("tls/hello", b"over tls", qos=1)
    assert got.get(timeout=TIMEOUT) == ("message", "tls/hello", b"over tls"), "message not echoed"
    print("message round trip over TLS")
    c.loop_stop()
    c.disconnect()

    # Plaintext MQTT CONNECT to the TLS port: the server reads it as a bad TLS record.
    s = socket.create_connection((HOST, PORT), timeout=TIMEOUT)
    s.sendall(bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x03]) + b"p-1")
    try:
        reply = s.recv(64)
    except (ConnectionResetError, socket.timeout):
        reply = b""
    assert not reply.startswith(b"\x20"), "a plaintext client got a CONNACK: %r" % reply
    print("plaintext refused")
    print("all MQTT TLS checks passed")


main()
