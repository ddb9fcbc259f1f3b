"""An unmodified Dapr program: default ports, no environment variables."""
from dapr.clients import DaprClient

with DaprClient() as d:
    d.save_state(store_name="statestore", key="order_1", value="hello statenode")
    got = d.get_state(store_name="statestore", key="order_1")
    assert got.data == b"hello statenode", got.data
    d.delete_state(store_name="statestore", key="order_1")
    assert d.get_state(store_name="statestore", key="order_1").data == b""
print("ok")
