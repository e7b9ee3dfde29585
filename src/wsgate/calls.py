"""Client ``call``s: in-process handlers first, then backend workers through the broker.

A ``call`` is checked (method name, grant, in-flight limit), then answered by
the handler registered in this process with ``@node.method(name)``, or else
queued for the backend workers of the method's namespace (its first dotted
token) and answered with the first worker's response. Either way the client
gets exactly one ``ok`` or ``error`` with the call's id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from wsgate import topics
from wsgate.auth import Identity
from wsgate.broker import Broker
from wsgate.cluster import CallJob, Router, encode_envelope
from wsgate.config import LimitsConfig
from wsgate.errors import BrokerError, ConnectionLost, InvalidState, InvalidTopic, RemoteError
from wsgate.hub import ClientConnection
from wsgate.metrics import Metrics
from wsgate.protocol.codes import ErrorCode
from wsgate.protocol.messages import Call, Error, Ok, payload_fields, payload_of

__all__ = ["CallContext", "Calls", "MethodHandler", "answer_error", "answer_ok"]

log = logging.getLogger("wsgate.node")


@dataclass(frozen=True, slots=True)
class CallContext:
    """One client ``call`` as seen by its handler.

    Attributes:
        method: the called method name.
        data: the payload (bytes when the client sent ``bin``).
        connection_id: the calling connection.
        user: its user (None for anonymous connections).
        identity: its full identity (grants, meta).
    """

    method: str
    data: Any
    connection_id: str
    user: str | None
    identity: Identity


MethodHandler = Callable[[CallContext], Awaitable[Any]]


def answer_error(
    conn: ClientConnection, request_id: int | None, code: str, message: str, data: Any = None
) -> None:
    """Queue an ``error`` answer to a client message."""
    conn.deliver(conn.codec.encode(Error(code=code, message=message, id=request_id, data=data)))


def answer_ok(conn: ClientConnection, request_id: int | None, data: Any, metrics: Metrics) -> None:
    """Queue an ``ok`` answer (nothing when the message had no id)."""
    if request_id is None:
        return
    try:
        frame = conn.codec.encode(Ok(request_id, *payload_fields(data)))
    except TypeError:
        metrics.encode_errors += 1
        answer_error(conn, request_id, ErrorCode.INTERNAL, "result cannot be encoded")
        return
    conn.deliver(frame)


class Calls:
    """The node's method registry and call dispatch.

    Args:
        limits: call timeout and in-flight limit.
        metrics: the node's counters (``calls``, ``call_errors``).
        broker: for queueing calls to backend workers.
        router: for awaiting the workers' responses.
        spawn: runs a coroutine as a task the node keeps track of.
    """

    def __init__(
        self,
        limits: LimitsConfig,
        metrics: Metrics,
        broker: Broker,
        router: Router,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        self.broker = broker
        self.router = router
        self._spawn = spawn
        self._methods: dict[str, MethodHandler] = {}

    def method(self, name: str) -> Callable[[MethodHandler], MethodHandler]:
        """Decorator registering an in-process handler for client ``call``s of ``name``."""

        def register(handler: MethodHandler) -> MethodHandler:
            self.register_method(name, handler)
            return handler

        return register

    def register_method(self, name: str, handler: MethodHandler) -> None:
        """Register ``handler`` for ``call``s of ``name``.

        Raises:
            InvalidTopic: the name is not a well-formed dotted name.
            InvalidState: a handler is already registered under that name.
        """
        topics.validate_topic(name)
        if name in self._methods:
            raise InvalidState(f"method {name!r} already has a handler")
        self._methods[name] = handler

    def handle(self, conn: ClientConnection, message: Call) -> None:
        """Check and dispatch one client ``call``."""
        self.metrics.calls += 1
        try:
            topics.validate_topic(message.method)
        except InvalidTopic as exc:
            self.metrics.call_errors += 1
            answer_error(conn, message.id, ErrorCode.BAD_REQUEST, f"invalid method name: {exc}")
            return
        if not conn.identity.can_call(message.method):
            self.metrics.call_errors += 1
            answer_error(
                conn, message.id, ErrorCode.PERMISSION_DENIED, f"may not call {message.method}"
            )
            return
        if conn.inflight_calls >= self.limits.max_inflight_calls:
            self.metrics.call_errors += 1
            answer_error(
                conn,
                message.id,
                ErrorCode.TOO_MANY_CALLS,
                f"at most {self.limits.max_inflight_calls} calls in flight",
            )
            return
        conn.inflight_calls += 1
        handler = self._methods.get(message.method)
        if handler is None:
            # No handler in this process: a backend worker may serve the method.
            self._spawn(self._run_remote_call(conn, message))
        else:
            self._spawn(self._run_call(conn, message, handler))

    def _call_timeout(self, message: Call) -> float:
        limit = self.limits.call_timeout
        return min(message.timeout, limit) if message.timeout else limit

    async def _run_call(
        self, conn: ClientConnection, message: Call, handler: MethodHandler
    ) -> None:
        try:
            await self._answer_call(conn, message, handler)
        finally:
            conn.inflight_calls -= 1

    async def _answer_call(
        self, conn: ClientConnection, message: Call, handler: MethodHandler
    ) -> None:
        timeout = self._call_timeout(message)
        context = CallContext(
            method=message.method,
            data=payload_of(message),
            connection_id=conn.id,
            user=conn.user,
            identity=conn.identity,
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                result = await handler(context)
        except TimeoutError:
            self.metrics.call_errors += 1
            answer_error(conn, message.id, ErrorCode.TIMEOUT, f"no answer within {timeout:g} s")
        except RemoteError as exc:
            self.metrics.call_errors += 1
            conn.deliver(
                conn.codec.encode(
                    Error(code=exc.code, message=exc.remote_message, id=message.id, data=exc.data)
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.call_errors += 1
            log.exception(
                "method %s failed after %.3f s", message.method, time.monotonic() - started
            )
            answer_error(conn, message.id, ErrorCode.METHOD_ERROR, "method failed")
        else:
            answer_ok(conn, message.id, result, self.metrics)

    async def _run_remote_call(self, conn: ClientConnection, message: Call) -> None:
        try:
            await self._answer_remote_call(conn, message)
        finally:
            conn.inflight_calls -= 1

    async def _answer_remote_call(self, conn: ClientConnection, message: Call) -> None:
        """Queue the call for the workers of its namespace and relay the first answer.

        A later answer to the same call (processed twice after a worker died) finds
        no waiter and is dropped by the router as late.
        """
        timeout = self._call_timeout(message)
        namespace = message.method.split(".", 1)[0]
        with self.router.expecting() as (rid, future):
            try:
                job = CallJob(
                    method=message.method,
                    cid=conn.id,
                    rid=rid,
                    reply_to=self.router.inbox,
                    deadline=time.time() + timeout,
                    payload=payload_of(message),
                    user=conn.user,
                    meta=dict(conn.identity.meta),
                )
                async with asyncio.timeout(timeout):
                    if not await self.broker.enqueue_call(namespace, encode_envelope(job)):
                        self.metrics.call_errors += 1
                        answer_error(
                            conn,
                            message.id,
                            ErrorCode.UNKNOWN_METHOD,
                            f"no handler for {message.method}",
                        )
                        return
                    response = await future
            except TimeoutError:
                self.metrics.call_errors += 1
                answer_error(
                    conn, message.id, ErrorCode.TIMEOUT, f"no worker answered within {timeout:g} s"
                )
                return
            except (TypeError, BrokerError, ConnectionLost) as exc:
                self.metrics.call_errors += 1
                log.warning("call of %s not forwarded to a worker: %s", message.method, exc)
                answer_error(conn, message.id, ErrorCode.INTERNAL, "call failed, retry later")
                return
        if response.error is None:
            answer_ok(conn, message.id, response.payload, self.metrics)
            return
        self.metrics.call_errors += 1
        conn.deliver(
            conn.codec.encode(
                Error(
                    code=response.error,
                    message=response.message,
                    id=message.id,
                    data=response.data,
                )
            )
        )
