"""A client certificate names an MQTT principal: with the certificate and no username the
client is let in (the rules let its common name connect); without it, CONNACK 135 (not
authorized). Usage: mqtt_cert.py MQTT_HOST:PORT CA_FILE CERT_FILE KEY_FILE"""

import queue
import sys

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1].rsplit(":", 1)
PORT = int(PORT)
CA, CERT, KEY = sys.argv[2:5]
TIMEOUT = 10


def connack(client_id, cert):
    got = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if cert:
        c.tls_set(ca_certs=CA, certfile=CERT, keyfile=KEY)
    else:
        c.tls_set(ca_certs=CA)
    c.on_connect = lambda cl, ud, flags, rc, props: got.put(rc.value)
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    try:
        return got.get(timeout=TIMEOUT)
    finally:
        c.loop_stop()
        c.disconnect()


def main():
    rc = connack("cert-1", cert=True)
    assert rc == 0, "with its certificate: CONNACK %d" % rc
    print("certificate principal connected")
    rc = connack("cert-2", cert=False)
    assert rc == 135, "without a certificate: CONNACK %d, want 135" % rc
    print("no certificate: not authorized")
    print("all MQTT certificate checks passed")


main()
