"""Client ``call``s to in-process method handlers."""

from __future__ import annotations

import asyncio

import wsgate

from ._client import eventually, scaled


async def test_call_result_comes_back_as_ok(gw, mint):
    seen: list[wsgate.CallContext] = []

    @gw.node.method("orders.create")
    async def create(ctx: wsgate.CallContext) -> dict[str, object]:
        seen.append(ctx)
        return {"order": 17, "items": ctx.data["items"]}

    client = await gw.connect(mint(user="alice", call=["orders.*"]))
    call = {"op": "call", "id": 9, "method": "orders.create", "data": {"items": ["tea"]}}
    await client.roundtrip(call, data={"order": 17, "items": ["tea"]})

    [ctx] = seen
    assert (ctx.method, ctx.user, ctx.connection_id) == ("orders.create", "alice", client.cid)
    assert gw.node.metrics.calls == 1 and gw.node.metrics.call_errors == 0


async def test_handler_remote_error_is_forwarded(gw, mint):
    @gw.node.method("orders.create")
    async def create(ctx: wsgate.CallContext) -> None:
        raise wsgate.RemoteError("invalid_input", "bad", {"field": "items"})

    client = await gw.connect(mint(user="alice", call=["orders.>"]))
    reply = await client.roundtrip(
        {"op": "call", "id": 3, "method": "orders.create", "data": {}},
        "error",
        code="invalid_input",
        message="bad",
    )
    assert reply["data"] == {"field": "items"}
    assert gw.node.metrics.call_errors == 1


async def test_handler_crash_is_method_error_and_the_socket_stays_open(gw, mint):
    @gw.node.method("orders.create")
    async def create(ctx: wsgate.CallContext) -> None:
        raise RuntimeError("database password is hunter2")

    client = await gw.connect(mint(user="alice", call=["orders.create"]))
    reply = await client.roundtrip(
        {"op": "call", "id": 4, "method": "orders.create"}, "error", code="method_error"
    )
    assert "hunter2" not in reply["message"]  # internals never reach the client
    await client.roundtrip({"op": "ping", "id": 5}, "pong")


async def test_slow_handler_times_out(gw, mint):
    cancelled = asyncio.Event()

    @gw.node.method("slow.op")
    async def slow(ctx: wsgate.CallContext) -> None:
        try:
            await asyncio.sleep(scaled(30))
        finally:
            cancelled.set()

    client = await gw.connect(mint(user="alice", call=["slow.op"]))
    call = {"op": "call", "id": 1, "method": "slow.op", "timeout": scaled(0.2)}
    await client.roundtrip(call, "error", code="timeout")
    assert cancelled.is_set()  # the handler does not keep running


async def test_call_timeout_is_capped_by_config(gateway, mint):
    gw = await gateway(call_timeout=scaled(0.2))

    @gw.node.method("slow.op")
    async def slow(ctx: wsgate.CallContext) -> None:
        await asyncio.sleep(scaled(30))

    client = await gw.connect(mint(user="alice", call=["slow.op"]))
    await client.send({"op": "call", "id": 1, "method": "slow.op", "timeout": 300})
    await client.expect("error", timeout=1, id=1, code="timeout")


async def test_unknown_method(gw, mint):
    client = await gw.connect(mint(user="alice", call=[">"]))
    await client.roundtrip(
        {"op": "call", "id": 2, "method": "no.such.method"}, "error", code="unknown_method"
    )


async def test_call_without_grant_is_denied(gw, mint):
    called = []

    @gw.node.method("admin.reset")
    async def reset(ctx: wsgate.CallContext) -> None:
        called.append(ctx)

    client = await gw.connect(mint(user="alice", call=["orders.*"]))
    await client.roundtrip(
        {"op": "call", "id": 6, "method": "admin.reset"}, "error", code="permission_denied"
    )
    assert called == []


async def test_too_many_calls_in_flight(gateway, mint):
    gw = await gateway(max_inflight_calls=2)
    release = asyncio.Event()

    @gw.node.method("wait")
    async def wait(ctx: wsgate.CallContext) -> str:
        await release.wait()
        return "done"

    client = await gw.connect(mint(user="alice", call=["wait"]))
    await client.send({"op": "call", "id": 1, "method": "wait"})
    await client.send({"op": "call", "id": 2, "method": "wait"})
    await client.roundtrip(
        {"op": "call", "id": 3, "method": "wait"}, "error", code="too_many_calls"
    )

    release.set()
    answers = {(await client.expect("ok"))["id"] for _ in range(2)}
    assert answers == {1, 2}
    await eventually(lambda: gw.node.metrics.calls == 3)
    await client.roundtrip({"op": "call", "id": 4, "method": "wait"}, data="done")
