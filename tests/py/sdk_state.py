"""The Dapr Python SDK, unmodified, against a statenode node (usually a follower).

Exits non-zero with a message on the first failed check. Ports come from the SDK's own
environment variables (DAPR_HTTP_PORT, DAPR_GRPC_PORT), set by the Rust test.
"""
import json
import sys
import time
import uuid
import warnings

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, Consistency, StateItem, StateOptions

warnings.simplefilter("ignore")
STORE = "statestore"
base = uuid.uuid4().hex


def k(name):
    return f"{base}-{name}"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def expect_error(fn, code, reason, what):
    try:
        fn()
    except DaprGrpcError as e:
        check(e.code().name == code, f"{what}: code {e.code().name}, wanted {code} ({e})")
        if reason:
            check(e.error_code() == reason, f"{what}: reason {e.error_code()}, wanted {reason}")
        return
    check(False, f"{what}: no error")


with DaprClient() as d:
    # save / get / delete, strings and bytes.
    d.save_state(STORE, k("str"), "hello")
    r = d.get_state(STORE, k("str"))
    check(r.data == b"hello" and r.etag != "", f"get str: {r.data!r} {r.etag!r}")
    d.save_state(STORE, k("bytes"), b"\x00\x01\xff")
    check(d.get_state(STORE, k("bytes")).data == b"\x00\x01\xff", "bytes round-trip")
    d.save_state(STORE, k("empty"), "")
    r = d.get_state(STORE, k("empty"))
    check(r.data == b"" and r.etag != "", "an empty value still has an etag")
    d.delete_state(STORE, k("str"))
    r = d.get_state(STORE, k("str"))
    check(r.data == b"" and r.etag == "", f"deleted: {r.data!r} {r.etag!r}")
    d.delete_state(STORE, k("never"))  # deleting a missing key is not an error
    # contentType application/json is normalised JSON.
    d.save_state(STORE, k("json"), '{ "b": 1,  "a": [1, 2] }', state_metadata={"contentType": "application/json"})
    check(json.loads(d.get_state(STORE, k("json")).data) == {"a": [1, 2], "b": 1}, "json value")

    # Bulk save and bulk get (request order, missing keys empty).
    d.save_bulk_state(STORE, [StateItem(k(f"b{i}"), f"v{i}") for i in range(5)])
    items = d.get_bulk_state(STORE, [k("b3"), k("missing"), k("b0")], parallelism=4).items
    check([i.key for i in items] == [k("b3"), k("missing"), k("b0")], "bulk order")
    check(items[0].data == b"v3" and items[2].data == b"v0", "bulk data")
    check(items[1].data == b"" and items[1].etag == "", "bulk missing item")

    # Etags: a stale etag is ABORTED (ERR_STATE_SAVE); the right one succeeds and changes it.
    d.save_state(STORE, k("e"), "1")
    e1 = d.get_state(STORE, k("e")).etag
    d.save_state(STORE, k("e"), "2", etag=e1)
    e2 = d.get_state(STORE, k("e")).etag
    check(e1 != e2, "etag changes on write")
    expect_error(lambda: d.save_state(STORE, k("e"), "3", etag=e1), "ABORTED", "ERR_STATE_SAVE", "stale etag save")
    expect_error(lambda: d.save_state(STORE, k("e"), "3", etag="bad-etag"), "ABORTED", "ERR_STATE_SAVE", "bad etag")
    check(d.get_state(STORE, k("e")).data == b"2", "value unchanged after conflicts")
    expect_error(lambda: d.delete_state(STORE, k("e"), etag=e1), "ABORTED", "ERR_STATE_DELETE", "stale etag delete")
    d.delete_state(STORE, k("e"), etag=e2)
    check(d.get_state(STORE, k("e")).data == b"", "deleted with the right etag")

    # First-write: create only without an etag.
    fw = StateOptions(concurrency=Concurrency.first_write, consistency=Consistency.strong)
    d.save_state(STORE, k("fw"), "first", options=fw)
    expect_error(lambda: d.save_state(STORE, k("fw"), "second", options=fw), "ABORTED", "ERR_STATE_SAVE", "first-write")
    check(d.get_state(STORE, k("fw")).data == b"first", "first write kept")

    # Transactions: in order, all or nothing.
    d.save_state(STORE, k("t1"), "x")
    d.execute_state_transaction(STORE, [
        TransactionalStateOperation(k("t1"), b"", operation_type=TransactionOperationType.delete),
        TransactionalStateOperation(k("t2"), "two"),
        TransactionalStateOperation(k("t3"), "three"),
        TransactionalStateOperation(k("t3"), b"", operation_type=TransactionOperationType.delete),
    ])
    check(d.get_state(STORE, k("t1")).data == b"", "tx delete")
    check(d.get_state(STORE, k("t2")).data == b"two", "tx upsert")
    check(d.get_state(STORE, k("t3")).data == b"", "tx ops in order")
    expect_error(lambda: d.execute_state_transaction(STORE, [
        TransactionalStateOperation(k("t4"), "four"),
        TransactionalStateOperation(k("t2"), "changed", etag="999999999"),
    ]), "INTERNAL", "ERR_STATE_TRANSACTION", "tx with a stale etag")
    check(d.get_state(STORE, k("t4")).data == b"", "failed tx applied nothing")
    check(d.get_state(STORE, k("t2")).data == b"two", "failed tx changed nothing")

    # TTL: readable at once, gone within a few seconds.
    d.save_state(STORE, k("ttl"), "short", state_metadata={"ttlInSeconds": "2"})
    check(d.get_state(STORE, k("ttl")).data == b"short", "ttl key readable")
    deadline = time.time() + 6
    while d.get_state(STORE, k("ttl")).data != b"":
        check(time.time() < deadline, "ttl key never expired")
        time.sleep(0.2)
    expect_error(lambda: d.save_state(STORE, k("ttl"), "x", state_metadata={"ttlInSeconds": "foo"}),
                 "INVALID_ARGUMENT", None, "bad ttl")

    # Query over JSON values.
    for i, (state, pid) in enumerate([("WA", 3), ("CA", 1), ("WA", 2), ("OR", 4)]):
        d.save_state(STORE, k(f"q{i}"), json.dumps({"run": base, "state": state, "id": pid}))
    q = {"filter": {"AND": [{"EQ": {"run": base}}, {"IN": {"state": ["WA", "CA"]}}]},
         "sort": [{"key": "id", "order": "DESC"}], "page": {"limit": 2}}
    r = d.query_state(STORE, json.dumps(q))
    check([json.loads(x.value)["id"] for x in r.results] == [3, 2], f"query page 1: {[x.key for x in r.results]}")
    check(r.token != "", "query token")
    q["page"]["token"] = r.token
    r = d.query_state(STORE, json.dumps(q))
    check([json.loads(x.value)["id"] for x in r.results] == [1] and r.token == "", "query page 2")

    # Metadata and unknown stores.
    md = d.get_metadata()
    check(any(c.name == STORE for c in md.registered_components), "metadata lists the store")
    expect_error(lambda: d.get_state("nostore", "k"), "INVALID_ARGUMENT", "DAPR_STATE_NOT_FOUND", "unknown store")
    expect_error(lambda: d.save_state(STORE, "a||b", "x"), "INVALID_ARGUMENT", "DAPR_STATE_ILLEGAL_KEY", "key with ||")

print("ok")
