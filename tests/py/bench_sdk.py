"""Latency of the Dapr Python SDK against a statenode node: N sequential save_state and
get_state calls (one client; latency-bound). Prints ops/s, p50 and p99 in milliseconds.

    statenode dev --nodes 3 --memory &        # HTTP 3500.., gRPC 50001..
    DAPR_GRPC_PORT=50002 DAPR_HTTP_PORT=3501 python3 tests/py/bench_sdk.py 2000
"""
import sys
import time
import warnings

from dapr.clients import DaprClient

warnings.simplefilter("ignore")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def report(name, samples):
    samples.sort()
    total = sum(samples)
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
    print(f"{name:<6} n={len(samples)} {len(samples) / total:8.0f} ops/s  p50 {p(0.50):6.2f} ms  p99 {p(0.99):6.2f} ms")


with DaprClient() as d:
    for _ in range(50):  # warm up the channel
        d.save_state("statestore", "bench-warm", "x")
    saves, gets = [], []
    value = "v" * 256
    for i in range(N):
        t = time.perf_counter()
        d.save_state("statestore", f"bench-{i % 1000}", value)
        saves.append(time.perf_counter() - t)
    for i in range(N):
        t = time.perf_counter()
        d.get_state("statestore", f"bench-{i % 1000}")
        gets.append(time.perf_counter() - t)
report("save", saves)
report("get", gets)
