"""Client ``call``s answered by backend workers (``Backend.method``), in one process.

Gateways and backends share a :class:`MemoryBus`: the call travels as a
``CallJob`` through the bus's call queue to a worker, and the ``Response``
comes back to the calling node's inbox, as it would through Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import wsgate
from wsgate.broker.memory import MemoryBroker, MemoryBus
from wsgate.cluster import CallJob, Response, decode_envelope, encode_envelope

from ._client import eventually, scaled

StartBackend = Callable[..., Any]


@pytest.fixture
def bus() -> MemoryBus:
    return MemoryBus()


@pytest.fixture
async def backend(bus: MemoryBus) -> AsyncIterator[StartBackend]:
    """Factory: ``backend()`` a Backend on the bus, not started; closed at teardown."""
    made: list[wsgate.Backend] = []

    def make(**options: Any) -> wsgate.Backend:
        gw = wsgate.connect_backend("memory://", bus=bus, **options)
        made.append(gw)
        return gw

    yield make
    for gw in reversed(made):
        await gw.close()


async def test_a_worker_answers_a_client_call(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    seen: list[wsgate.CallContext] = []
    worker = backend()

    @worker.method("orders.create")
    async def create(call: wsgate.CallContext) -> dict[str, Any]:
        seen.append(call)
        return {"order": 17, "items": call.data["items"]}

    await worker.start()
    client = await gw.connect(
        mint(user="alice", call=["orders.*"], extra={"meta": {"plan": "pro"}})
    )
    call = {"op": "call", "id": 9, "method": "orders.create", "data": {"items": ["tea"]}}
    await client.roundtrip(call, data={"order": 17, "items": ["tea"]})

    [ctx] = seen
    assert (ctx.method, ctx.user, ctx.connection_id) == ("orders.create", "alice", client.cid)
    assert ctx.identity.user == "alice" and ctx.identity.meta == {"plan": "pro"}
    assert gw.node.metrics.calls == 1 and gw.node.metrics.call_errors == 0
    await eventually(lambda: gw.node.router.in_flight == 0, what="the call to end")


async def test_bytes_travel_both_ways_untouched(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("files.flip")
    async def flip(call: wsgate.CallContext) -> bytes:
        assert isinstance(call.data, bytes)
        return call.data[::-1]

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["files.>"]), msgpack=True)
    reply = await client.roundtrip(
        {"op": "call", "id": 1, "method": "files.flip", "bin": b"\x00\x01\xff"}
    )
    assert reply["bin"] == b"\xff\x01\x00"


async def test_remote_error_code_message_and_data_pass_through(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("orders.create")
    async def create(call: wsgate.CallContext) -> None:
        raise wsgate.RemoteError("invalid_input", "bad", {"field": "items"})

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.>"]))
    reply = await client.roundtrip(
        {"op": "call", "id": 3, "method": "orders.create", "data": {}},
        "error",
        code="invalid_input",
        message="bad",
    )
    assert reply["data"] == {"field": "items"}
    assert gw.node.metrics.call_errors == 1


async def test_a_crashing_handler_is_method_error_without_details(
    gateway, bus, backend, mint, caplog
):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("orders.create")
    async def create(call: wsgate.CallContext) -> None:
        raise RuntimeError("database password is hunter2")

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.create"]))
    reply = await client.roundtrip(
        {"op": "call", "id": 4, "method": "orders.create"}, "error", code="method_error"
    )
    assert "hunter2" not in reply["message"]  # internals never reach the client
    logged = [r for r in caplog.records if r.name == "wsgate.backend" and r.exc_info]
    assert logged and "hunter2" in str(logged[0].exc_info[1])  # but logged in the worker
    await client.roundtrip({"op": "ping", "id": 5}, "pong")


async def test_a_slow_worker_times_out_and_its_handler_is_cancelled(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()
    cancelled = asyncio.Event()

    @worker.method("slow.op")
    async def slow(call: wsgate.CallContext) -> None:
        try:
            await asyncio.sleep(scaled(30))
        finally:
            cancelled.set()

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["slow.op"]))
    reply = await client.roundtrip(
        {"op": "call", "id": 1, "method": "slow.op", "timeout": scaled(0.3)},
        "error",
        code="timeout",
    )
    assert "no worker answered" in reply["message"]
    async with asyncio.timeout(scaled(2)):
        await cancelled.wait()  # the worker stops at the deadline too
    await client.no_message(0.3)  # and sends nothing more


async def test_the_call_timeout_cap_applies_to_workers(gateway, bus, backend, mint):
    gw = await gateway(bus=bus, call_timeout=scaled(0.3))
    worker = backend()

    @worker.method("slow.op")
    async def slow(call: wsgate.CallContext) -> None:
        await asyncio.sleep(scaled(30))

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["slow.op"]))
    await client.send({"op": "call", "id": 1, "method": "slow.op", "timeout": 300})
    await client.expect("error", timeout=2, id=1, code="timeout")


async def test_no_worker_means_unknown_method_at_once(gateway, bus, mint):
    gw = await gateway(bus=bus, call_timeout=30)
    client = await gw.connect(mint(user="alice", call=[">"]))
    async with asyncio.timeout(scaled(1)):  # not after the 30 s call timeout
        await client.roundtrip(
            {"op": "call", "id": 2, "method": "orders.create"}, "error", code="unknown_method"
        )
    assert gw.node.metrics.call_errors == 1


async def test_a_method_the_worker_lacks_in_its_namespace_is_unknown(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("orders.create")
    async def create(call: wsgate.CallContext) -> str:
        return "created"

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.>"]))
    await client.roundtrip(
        {"op": "call", "id": 1, "method": "orders.cancel"}, "error", code="unknown_method"
    )


async def test_permissions_are_checked_before_any_worker_is_asked(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()
    called: list[wsgate.CallContext] = []

    @worker.method("admin.reset")
    async def reset(call: wsgate.CallContext) -> None:
        called.append(call)

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.*"]))
    await client.roundtrip(
        {"op": "call", "id": 6, "method": "admin.reset"}, "error", code="permission_denied"
    )
    assert called == []


async def test_an_in_process_handler_takes_precedence(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("orders.create")
    async def remote(call: wsgate.CallContext) -> str:
        return "worker"

    @gw.node.method("orders.create")
    async def local(call: wsgate.CallContext) -> str:
        return "node"

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.>"]))
    await client.roundtrip({"op": "call", "id": 1, "method": "orders.create"}, data="node")


async def test_calls_from_every_node_are_load_balanced_over_workers(gateway, bus, backend, mint):
    a = await gateway(bus=bus, node_id="node-a")
    b = await gateway(bus=bus, node_id="node-b")
    served: dict[str, int] = {}
    release = asyncio.Event()

    def serve_as(worker: wsgate.Backend) -> None:
        @worker.method("work.echo")
        async def echo(call: wsgate.CallContext) -> Any:
            served[worker.id] = served.get(worker.id, 0) + 1
            await release.wait()
            return call.data

    one, two = backend(), backend()
    serve_as(one)
    serve_as(two)
    await one.start()
    await two.start()
    clients = [
        await a.connect(mint(user="u", call=["work.>"])),
        await b.connect(mint(user="v", call=["work.>"])),
    ]
    for i in range(10):
        await clients[i % 2].send({"op": "call", "id": i, "method": "work.echo", "data": i})
    await eventually(lambda: sum(served.values()) == 10, what="10 calls in the workers")
    release.set()
    for i in range(10):
        await clients[i % 2].expect("ok", id=i, data=i)
    assert sorted(served) == sorted([one.id, two.id]), served


async def test_a_method_registered_on_a_started_backend(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()
    await worker.start()

    @worker.method("late.hello")
    async def hello(call: wsgate.CallContext) -> str:
        return "hi"

    await worker.ready()
    client = await gw.connect(mint(user="alice", call=["late.>"]))
    await client.roundtrip({"op": "call", "id": 1, "method": "late.hello"}, data="hi")


async def test_a_closed_backend_serves_no_more(gateway, bus, backend, mint):
    gw = await gateway(bus=bus)
    worker = backend()

    @worker.method("orders.create")
    async def create(call: wsgate.CallContext) -> str:
        return "created"

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["orders.>"]))
    await client.roundtrip({"op": "call", "id": 1, "method": "orders.create"}, data="created")
    await worker.close()
    await client.roundtrip(
        {"op": "call", "id": 2, "method": "orders.create"}, "error", code="unknown_method"
    )


async def test_a_duplicate_answer_is_dropped(gateway, bus, mint):
    # A raw worker that answers every call twice (as after a takeover).
    gw = await gateway(bus=bus)
    broker = MemoryBroker(bus)

    class Silent:
        def on_publication(self, publication: Any) -> None: ...
        def on_broadcast(self, payload: Any) -> None: ...
        def on_direct(self, data: bytes) -> None: ...

    await broker.start("raw-worker", Silent())
    ready = asyncio.Event()

    async def twice(data: bytes) -> None:
        job = decode_envelope(data)
        assert isinstance(job, CallJob)
        for n in (1, 2):
            await broker.send_direct(job.reply_to, encode_envelope(Response(job.rid, n)))

    task = asyncio.create_task(
        broker.serve_calls("dup", "raw-worker", twice, claim_after=1.0, on_ready=ready.set)
    )
    try:
        await ready.wait()
        client = await gw.connect(mint(user="alice", call=["dup.>"]))
        late = gw.node.router.late_responses
        await client.roundtrip({"op": "call", "id": 1, "method": "dup.x"}, data=1)
        await client.no_message(0.2)
        assert gw.node.router.late_responses == late + 1
        assert gw.node.metrics.calls == 1 and gw.node.metrics.call_errors == 0
    finally:
        task.cancel()
        await asyncio.wait([task])
        await broker.close()


async def test_inflight_accounting_covers_worker_calls(gateway, bus, backend, mint):
    gw = await gateway(bus=bus, max_inflight_calls=2)
    worker = backend()
    release = asyncio.Event()

    @worker.method("wait.here")
    async def wait(call: wsgate.CallContext) -> str:
        await release.wait()
        return "done"

    await worker.start()
    client = await gw.connect(mint(user="alice", call=["wait.>"]))
    await client.send({"op": "call", "id": 1, "method": "wait.here"})
    await client.send({"op": "call", "id": 2, "method": "wait.here"})
    await client.roundtrip(
        {"op": "call", "id": 3, "method": "wait.here"}, "error", code="too_many_calls"
    )
    release.set()
    await client.expect("ok", id=1, data="done")
    await client.expect("ok", id=2, data="done")
    await client.roundtrip({"op": "call", "id": 4, "method": "wait.here"}, data="done")
