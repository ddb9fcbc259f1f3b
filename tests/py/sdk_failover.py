"""Writes through the Dapr Python SDK while the Rust test kills the leader.

Prints "progress N" after each acknowledged write; retries a failed write (the SDK raises
while no leader is elected) until it is acknowledged; at the end reads every acknowledged
key back and exits non-zero if one is missing or wrong.
"""
import sys
import time
import warnings

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError

warnings.simplefilter("ignore")
N = int(sys.argv[1])
STORE = "statestore"
acked = {}
errors = 0
with DaprClient() as d:
    for i in range(N):
        key, value = f"failover-{i}", f"value-{i}"
        deadline = time.time() + 30
        while True:
            try:
                d.save_state(STORE, key, value)
                break
            except DaprGrpcError as e:
                errors += 1
                if time.time() > deadline:
                    print(f"FAILED: write {i} not acknowledged within 30 s: {e}", file=sys.stderr)
                    sys.exit(1)
                time.sleep(0.1)
        acked[key] = value
        print(f"progress {i + 1}", flush=True)
    for key, value in acked.items():
        got = d.get_state(STORE, key).data
        if got != value.encode():
            print(f"FAILED: acknowledged {key}={value} reads back {got!r}", file=sys.stderr)
            sys.exit(1)
print(f"ok {len(acked)} writes, {errors} retried attempts", flush=True)
