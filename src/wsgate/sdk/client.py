"""The client SDK: an application's connection to the gateway (docs/protocol.md)::

    async with wsgate.connect("ws://gw:8765/ws", token=token) as client:
        async for message in client.subscribe("chat.*"):
            print(message.topic, message.data)

A :class:`Client` holds one connection at a time (:mod:`.connection`) and opens
a new one after a reconnectable close or a failed attempt, waiting before each
attempt with exponential backoff and full jitter (section 9.2)::

    CONNECTING -------------welcome-------------> CONNECTED
        |                                          |     ^
        | failed attempt           reconnectable   |     | welcome, subscriptions
        v                          close           v     | sent again
        +-------------------------------------> RECONNECTING <--+
                                                   |            | failed attempt
                                                   +------------+
    any state --terminal or application close, or close()--> CLOSED

Delivery is at most once, as on the wire: after a reconnect the client sends its
subscriptions again and the same :class:`~.subscription.Subscription` iterators
go on, but whatever was published while it was disconnected is lost. Publishes
and calls still waiting for their answer when a connection ends fail with
:class:`~wsgate.errors.ConnectionLost` and are never retried. A close that ends
the client surfaces as :class:`~wsgate.errors.ConnectionClosed` (with its close
code) from every iterator and every later call.

:class:`SyncClient` (from :mod:`.sync_client`, also importable from here) drives
a client from blocking code, on an event loop of its own in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from functools import partial
from typing import Any, Final

from websockets import exceptions as ws_errors

from wsgate import topics
from wsgate.errors import (
    ConnectionClosed,
    ConnectionLost,
    InvalidState,
    RemoteError,
    RequestTimeout,
)
from wsgate.protocol.codec import JSON, MSGPACK
from wsgate.protocol.codes import CloseCode, ErrorCode
from wsgate.protocol.messages import (
    Call,
    ClientMessage,
    Error,
    ErrorInfo,
    Msg,
    Ok,
    Pub,
    Push,
    Reply,
    Req,
    ServerMessage,
    Sub,
    Unsub,
    Welcome,
    payload_fields,
    payload_of,
)
from wsgate.sdk.connection import (
    STABLE_AFTER,
    Connection,
    backoff_delay,
    closed_by,
    open_connection,
)
from wsgate.sdk.subscription import Inbox, Message, Subscription
from wsgate.sdk.sync_client import SyncClient, SyncSubscription

__all__ = [
    "Client",
    "ClientState",
    "Message",
    "Subscription",
    "SyncClient",
    "SyncSubscription",
    "connect",
    "connect_sync",
]

log = logging.getLogger("wsgate.client")

TokenProvider = Callable[[], Awaitable[str]]
RequestHandler = Callable[[Any], Awaitable[Any]]

CLIENT_ERROR: Final = "client_error"
"""The ``reply`` error code when a request handler fails unexpectedly."""
_CODECS: Final = {"json": JSON, "msgpack": MSGPACK}


class ClientState(StrEnum):
    """Where a :class:`Client` is (see the module diagram)."""

    CONNECTING = "connecting"
    """The first connection is being opened."""
    CONNECTED = "connected"
    """Welcomed and resubscribed."""
    RECONNECTING = "reconnecting"
    """Waiting out a backoff delay before the next attempt; reported once per attempt."""
    CLOSED = "closed"
    """Not started yet, or ended for good."""


class Client:
    """A connection to the gateway that reconnects by itself; made by :func:`connect`.

    Args:
        url: the gateway's ``ws://`` or ``wss://`` URL.
        token: sent as ``Authorization: Bearer``; None connects anonymously.
        encoding: ``"json"`` or ``"msgpack"``, offered as the subprotocol.
        reconnect: reconnect after reconnectable closes and failed attempts (the
            first connection's too); False ends the client at the first failure.
        token_provider: ``async () -> str``, called for a token before every
            attempt (instead of ``token``); with it, ``4003 TOKEN_EXPIRED`` is
            followed by a reconnect, without it the client ends. An OSError or
            TimeoutError it raises fails the attempt; anything else ends the client.
        on_state: called with every :class:`ClientState` the client enters.
        backoff_base, backoff_cap: seconds, see :func:`backoff_delay`.
        ping_interval: seconds between WebSocket pings of the client; a pong
            later than ``timeout`` counts as a lost connection. None: the client
            only answers the server's pings.
        timeout: seconds to wait for an answer (publish, subscribe; the default of
            call) and for the opening handshake and ``welcome``.
        max_pending: what each iterator buffers before dropping the oldest.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        encoding: str = "json",
        reconnect: bool = True,
        token_provider: TokenProvider | None = None,
        on_state: Callable[[ClientState], object] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        ping_interval: float | None = None,
        timeout: float = 10.0,
        max_pending: int = 1024,
    ) -> None:
        if encoding not in _CODECS:
            raise InvalidState(f"encoding must be 'json' or 'msgpack', not {encoding!r}")
        if min(backoff_base, backoff_cap, timeout, max_pending) <= 0:
            raise InvalidState("backoff_base, backoff_cap, timeout, max_pending must be positive")
        self.url = url
        self.codec = _CODECS[encoding]
        self._token = token
        self._token_provider = token_provider
        self._reconnect = reconnect
        self._on_state = on_state
        self._backoff = (backoff_base, backoff_cap)
        self._ping_interval = ping_interval
        self._timeout = timeout
        self._max_pending = max_pending
        self._state = ClientState.CLOSED
        self._welcome: Welcome | None = None
        self._conn: Connection | None = None
        self._ready = asyncio.Event()  # wakes whoever waits for CONNECTED (or the end)
        self._subs: dict[str, list[Subscription]] = {}
        self._pushes: weakref.WeakSet[Inbox[Any]] = weakref.WeakSet()
        self._push_callbacks: list[Callable[[Any], object]] = []
        self._request_handler: RequestHandler | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closing = False
        self._finished = False
        self._error: ConnectionClosed | None = None

    def __repr__(self) -> str:
        return f"<Client {self.url} {self._state} cid={self.connection_id!r}>"

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connection_id(self) -> str | None:
        """From the latest ``welcome``: new after a reconnect unless the token claims one."""
        return self._welcome.cid if self._welcome else None

    @property
    def user(self) -> str | None:
        """The token's user; None before ``welcome`` and for anonymous connections."""
        return self._welcome.user if self._welcome else None

    @property
    def node(self) -> str | None:
        """The id of the node serving the latest connection."""
        return self._welcome.node if self._welcome else None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; returns once welcomed, retrying reconnectable failures with backoff.

        Raises:
            ConnectionClosed: the gateway refused for good (bad token 4100,
                HTTP 403, ...), or any failure when ``reconnect`` is off.
            InvalidState: started twice, or closed before it connected.
        """
        if self._runner is not None or self._closing:
            raise InvalidState("a client starts once")
        self._first = asyncio.get_running_loop().create_future()
        self._set_state(ClientState.CONNECTING)
        self._runner = asyncio.create_task(self._run(), name=f"wsgate client of {self.url}")
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection with 1000, end every iterator; waiters fail. Idempotent."""
        self._closing = True
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()  # it closes its connection on the way out
            await asyncio.wait({self._runner})
        self._finish(None)
        tasks = self._tasks - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks)

    async def wait_closed(self) -> None:
        """Wait for the end; raises the close that ended it unless it was :meth:`close`."""
        if self._runner is not None:
            await asyncio.wait({self._runner})
        self._check_open(closed_ok=True)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- verbs ----------------------------------------------------------------------

    def subscribe(self, pattern: str, *, max_pending: int | None = None) -> Subscription:
        """Subscribe to a topic or pattern: await the result, iterate it, or both.

        Raises:
            InvalidTopic: a malformed pattern (at once, before anything is awaited).
            RemoteError: (when awaited) the server refused, e.g. ``permission_denied``.
            RequestTimeout, ConnectionLost, ConnectionClosed: (when awaited) as
                :meth:`publish`.
        """
        topics.validate_pattern(pattern)
        self._check_open()
        return Subscription(self, pattern, max_pending or self._max_pending)

    async def publish(self, topic: str, data: Any = None, *, timeout: float | None = None) -> None:
        """Publish ``data`` (bytes travel as ``bin``) and wait for the server's ``ok``.

        Waits first while the client reconnects, within ``timeout``.

        Raises:
            InvalidTopic: ``topic`` is not a concrete, well-formed topic.
            TypeError: ``data`` cannot be encoded.
            RemoteError: the server refused it (``permission_denied``, ...).
            RequestTimeout: no answer within ``timeout`` (default: the client's).
            ConnectionLost: the connection ended before the answer; it is not retried.
            ConnectionClosed: the client ended with this close code.
            InvalidState: the client is not started, or closed.
        """
        topics.validate_topic(topic)
        data, binary = payload_fields(data)
        await self._ask(f"publish to {topic!r}", partial(Pub, topic, data, binary), timeout)

    async def call(self, method: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Call a backend method; its result (bytes when it answered with ``bin``).

        ``timeout`` (default: the client's) is also sent to the server, which caps
        it at its ``call_timeout`` and then answers with the error ``timeout``.

        Raises:
            InvalidTopic: ``method`` is not a well-formed dotted name.
            RemoteError: the server or the method answered with an error.
            RequestTimeout, ConnectionLost, ConnectionClosed, InvalidState, TypeError:
                as :meth:`publish`; a call is never retried.
        """
        topics.validate_topic(method)  # method names follow the topic rules (protocol.md 6.2)
        limit = timeout or self._timeout
        data, binary = payload_fields(data)
        hint = limit if limit <= 300 else None  # the server refuses more (protocol.md 4.2)
        ok = await self._ask(
            f"call {method!r}", lambda i: Call(i, method, data, binary, hint), limit
        )
        return payload_of(ok)

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Answer the server's ``req`` messages with ``await handler(data)``; a decorator.

        A :class:`~wsgate.errors.RemoteError` raised by the handler is replied with
        its code, message and data; any other exception with ``client_error`` and
        ``str(exc)`` as the message (the backend is the application's own).
        Without a handler, requests are answered with the error ``unsupported``.
        """
        self._request_handler = handler
        return handler

    def on_push(self, callback: Callable[[Any], object]) -> Callable[[Any], object]:
        """Call ``callback(data)`` for every ``push``; awaited if it returns an awaitable."""
        self._push_callbacks.append(callback)
        return callback

    def pushes(self, *, max_pending: int | None = None) -> AsyncIterator[Any]:
        """An iterator over the payloads of the ``push`` messages that arrive from now on.

        It ends with the client (raising :class:`~wsgate.errors.ConnectionClosed`
        when a close ended it); one dropped by its reader is forgotten.
        """
        self._check_open()
        inbox: Inbox[Any] = Inbox(max_pending or self._max_pending)
        self._pushes.add(inbox)  # weakly: an iterator its reader dropped costs nothing
        return inbox

    # -- requests ---------------------------------------------------------------------

    def _check_open(self, *, closed_ok: bool = False) -> None:
        if self._error is not None:
            raise ConnectionClosed(self._error.code, self._error.reason) from self._error
        if self._closing and not closed_ok:
            raise InvalidState("the client is closed")

    async def _connected(self) -> Connection:
        """The current connection, once CONNECTED (waiting through reconnects)."""
        while True:
            self._check_open()
            if self._runner is None:
                raise InvalidState("the client is not started: use `async with` or start()")
            conn = self._conn
            if self._state is ClientState.CONNECTED and conn is not None and conn.closed is None:
                return conn
            self._ready.clear()
            await self._ready.wait()

    async def _ask(
        self, what: str, build: Callable[[int], ClientMessage], timeout: float | None
    ) -> Ok:
        limit = timeout or self._timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                conn = await self._connected()
                return await conn.request(build)
        except TimeoutError:
            if not deadline.expired():
                raise
            error = RequestTimeout(self.connection_id or "", limit)
            error.args = (f"{what}: no answer within {limit:g} s",)  # not "connection ..."
            raise error from None

    async def _subscribe(self, sub: Subscription) -> None:
        self._check_open()
        self._subs.setdefault(sub.pattern, []).append(sub)  # route what follows the ok
        try:
            await self._ask(f"subscribe to {sub.pattern!r}", partial(Sub, topic=sub.pattern), None)
        except BaseException:
            self._forget(sub)
            raise

    async def _unsubscribe(self, sub: Subscription) -> None:
        if not self._forget(sub) or self._state is not ClientState.CONNECTED:
            return  # another iterator holds the pattern, or no connection does
        with contextlib.suppress(ConnectionLost, ConnectionClosed, InvalidState):
            try:
                await self._ask(
                    f"unsubscribe {sub.pattern!r}", partial(Unsub, topic=sub.pattern), None
                )
            except RemoteError as exc:
                if exc.code != ErrorCode.NOT_SUBSCRIBED:
                    raise

    def _forget(self, sub: Subscription) -> bool:
        """Stop routing to ``sub``; True when it was the last holder of its pattern."""
        subs = self._subs.get(sub.pattern)
        if subs is None or sub not in subs:
            return False
        subs.remove(sub)
        if subs:
            return False
        del self._subs[sub.pattern]
        return True

    # -- the connection -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_until_the_end()
        except Exception as exc:  # a bug here must not leave every waiter hanging
            log.exception("client of %s failed", self.url)
            closed = ConnectionClosed(CloseCode.INTERNAL_ERROR, f"client failed: {exc!r}")
            closed.__cause__ = exc
            self._finish(closed)

    async def _connect_until_the_end(self) -> None:
        """Open, serve and reopen connections until one ends the client."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            opened_at: float | None = None
            try:
                token = await self._token_provider() if self._token_provider else self._token
                conn, rest = await open_connection(
                    self.url,
                    self.codec,
                    token=token,
                    timeout=self._timeout,
                    ping_interval=self._ping_interval,
                )
            except Exception as exc:
                closed, retry = self._verdict(exc)
            else:
                opened_at = loop.time()
                closed, retry = await self._serve(conn, rest)
            if not retry:
                self._finish(closed)
                return
            if opened_at is not None and loop.time() - opened_at >= STABLE_AFTER:
                failures = 0
            log.info("connection to %s ended (%s); reconnecting", self.url, closed)
            self._set_state(ClientState.RECONNECTING)
            await asyncio.sleep(backoff_delay(failures, *self._backoff))
            failures += 1

    def _verdict(self, exc: BaseException) -> tuple[ConnectionClosed, bool]:
        """How it ended (:func:`closed_by`) and whether this client tries again."""
        closed, retry = closed_by(exc)
        if closed.code == CloseCode.TOKEN_EXPIRED:
            retry = self._token_provider is not None  # the same token would fail again
        return closed, retry and self._reconnect and not self._closing

    async def _serve(
        self, conn: Connection, rest: list[ServerMessage]
    ) -> tuple[ConnectionClosed, bool]:
        """Resubscribe, then report CONNECTED and read until the connection ends."""
        self._welcome = conn.welcome
        self._conn = conn
        for message in rest:
            self._dispatch(conn, message)
        reader = asyncio.create_task(self._read(conn))
        try:
            await self._resubscribe(conn)
            if not reader.done():
                self._set_state(ClientState.CONNECTED)
                self._ready.set()
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)
            return await reader
        except BaseException:  # close() cancelled this task (or a bug): close with 1000
            reader.cancel()
            if conn.closed is None:
                conn.end(ConnectionClosed(CloseCode.NORMAL, "closed by the client"))
            await conn.ws.close()
            raise
        finally:
            self._conn = None

    async def _resubscribe(self, conn: Connection) -> None:
        """Send every confirmed subscription again, all at once (protocol.md 9.2)."""
        patterns = [p for p, subs in self._subs.items() if any(s.active for s in subs)]
        results = await asyncio.gather(
            *(conn.request(partial(Sub, topic=pattern)) for pattern in patterns),
            return_exceptions=True,
        )
        for pattern, result in zip(patterns, results, strict=True):
            if isinstance(result, RemoteError):  # e.g. the new token lacks the grant
                for sub in self._subs.pop(pattern, []):
                    sub._end(result)
            elif isinstance(result, BaseException) and not isinstance(result, ConnectionLost):
                raise result

    async def _read(self, conn: Connection) -> tuple[ConnectionClosed, bool]:
        """Dispatch every message until the connection ends; how it ended (:meth:`_verdict`).

        The answers still awaited on the connection fail as soon as it ends.
        """
        try:
            while True:
                for message in await conn.receive():
                    self._dispatch(conn, message)
        except ws_errors.ConnectionClosed as exc:
            closed, retry = self._verdict(exc)
        except Exception:
            conn.end(ConnectionClosed(CloseCode.INTERNAL_ERROR, "client failed"))
            raise
        conn.end(closed)
        return closed, retry

    def _dispatch(self, conn: Connection, message: ServerMessage) -> None:
        if isinstance(message, Msg):
            received = Message(message.topic, payload_of(message))
            for pattern, subs in self._subs.items():
                if topics.matches(pattern, message.topic):
                    for sub in subs:
                        sub._deliver(received)
        elif isinstance(message, Ok | Error):
            conn.answer(message)
        elif isinstance(message, Push):
            self._on_push(payload_of(message))
        elif isinstance(message, Req):
            self._spawn(self._answer(conn, message))

    def _on_push(self, data: Any) -> None:
        for inbox in self._pushes:
            inbox.put(data)
        for callback in self._push_callbacks:
            try:
                result = callback(data)
            except Exception:
                log.exception("push callback %r failed", callback)
                continue
            if isinstance(result, Awaitable):
                self._spawn(_logged(result, f"push callback {callback!r}"))

    async def _answer(self, conn: Connection, request: Req) -> None:
        """Run the request handler and send its ``reply`` (protocol.md 6.1)."""
        try:
            if self._request_handler is None:
                raise RemoteError("unsupported", "no request handler")
            result = await self._request_handler(payload_of(request))
            reply = Reply(request.id, *payload_fields(result))
            conn.codec.encode(reply)  # a result that cannot be encoded fails here
        except RemoteError as exc:
            info = ErrorInfo(exc.code[:255] or CLIENT_ERROR, exc.remote_message[:1000], exc.data)
            reply = Reply(request.id, error=info)
        except Exception as exc:
            log.exception("request handler failed")
            message = (str(exc) or type(exc).__name__)[:1000]
            reply = Reply(request.id, error=ErrorInfo(CLIENT_ERROR, message))
        try:
            try:
                await conn.send(reply)
            except TypeError:  # the error's data cannot be encoded: send the error without
                assert reply.error is not None
                error = ErrorInfo(reply.error.code, reply.error.message)
                await conn.send(Reply(request.id, error=error))
        except ConnectionLost:
            pass  # the server failed the request when the connection ended

    def _finish(self, error: ConnectionClosed | None) -> None:
        """End the client once: every waiter and iterator learns how."""
        if self._finished:
            return
        self._finished = True
        if error is not None and not self._closing:
            self._error = error
            log.warning("client of %s ended: %s", self.url, error)
        self._closing = True
        self._ready.set()
        if self._first is not None and not self._first.done():
            self._first.set_exception(error or InvalidState("closed before it connected"))
            self._first.exception()  # retrieved: start() may have gone
        for subs in self._subs.values():
            for sub in subs:
                sub._end(self._error)
        self._subs.clear()
        for inbox in list(self._pushes):
            inbox.end(self._error)
        for task in self._tasks - {asyncio.current_task()}:
            task.cancel()
        self._set_state(ClientState.CLOSED)

    def _set_state(self, state: ClientState) -> None:
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("state callback failed")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)


async def _logged(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)


def connect(url: str, token: str | None = None, **options: Any) -> Client:
    """A :class:`Client` of ``url``, to use with ``async with`` (or ``await start()``).

    Args:
        url: the gateway's WebSocket URL.
        token: the token (or pass ``token_provider``).
        **options: see :class:`Client`.
    """
    return Client(url, token, **options)


def connect_sync(url: str, token: str | None = None, **options: Any) -> SyncClient:
    """A connected :class:`~.sync_client.SyncClient` (use it with ``with``).

    Args:
        url, token, **options: as :func:`connect`.
    """
    return SyncClient(Client(url, token, **options))
