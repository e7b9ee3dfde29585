"""A blocking wrapper around the asynchronous client, for scripts::

    with wsgate.connect_sync("ws://gw:8765/ws", token=token) as client:
        client.publish("chat.lobby", {"text": "hi"})
        for message in client.subscribe("chat.*", timeout=5):
            print(message.topic, message.data)

The wrapped :class:`~wsgate.sdk.client.Client` runs on an event loop of its own,
in a background thread; each method hands a coroutine to that loop and blocks
until it is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from wsgate.errors import InvalidState
from wsgate.sdk.subscription import Message, Subscription

if TYPE_CHECKING:
    from wsgate.sdk.client import Client

__all__ = ["SyncClient", "SyncSubscription"]

T = TypeVar("T")


class SyncClient:
    """A :class:`~wsgate.sdk.client.Client` for blocking code; see :func:`connect_sync`.

    Starts ``client`` (not started yet) on a loop in a background thread and
    returns once it is connected. Every method blocks until its answer, within
    the client's timeouts, and raises what the asynchronous method raises.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wsgate-client")
        self._thread.daemon = True  # a script that forgets close() still exits
        self._thread.start()
        try:
            self._run(client.start())
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> Client:
        """The asynchronous client (use it only on its own loop)."""
        return self._client

    @property
    def connection_id(self) -> str | None:
        return self._client.connection_id

    @property
    def user(self) -> str | None:
        return self._client.user

    def publish(self, topic: str, data: Any = None, *, timeout: float | None = None) -> None:
        """See :meth:`Client.publish`."""
        self._run(self._client.publish(topic, data, timeout=timeout))

    def call(self, method: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """See :meth:`Client.call`."""
        return self._run(self._client.call(method, data, timeout=timeout))

    def subscribe(self, pattern: str, *, timeout: float | None = None) -> SyncSubscription:
        """Subscribe (waiting for the ``ok``); iterate the result for messages.

        Args:
            timeout: longest wait for each message; iteration then raises
                TimeoutError. None waits as long as it takes.
        """
        sub = self._run(self._subscribe(pattern))
        return SyncSubscription(self, sub, timeout)

    async def _subscribe(self, pattern: str) -> Subscription:
        return await self._client.subscribe(pattern)

    def close(self) -> None:
        """Close the client and stop its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
            self._run(self._loop.shutdown_asyncgens())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread or self._loop.is_closed():
            coro.close()
            raise InvalidState("closed, or called from the client's own thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


class SyncSubscription(Iterator[Message]):
    """A :class:`Subscription` read by blocking code; from :meth:`SyncClient.subscribe`."""

    def __init__(self, owner: SyncClient, sub: Subscription, timeout: float | None) -> None:
        self._owner = owner
        self.subscription = sub
        self.timeout = timeout

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> Message:
        try:
            return self.get(self.timeout)
        except EOFError:
            raise StopIteration from None

    def get(self, timeout: float | None = None) -> Message:
        """The next message.

        Raises:
            TimeoutError: none within ``timeout`` seconds (no message is lost).
            EOFError: the subscription has ended (unsubscribed, client closed).
            ConnectionClosed: the client ended with this close code.
        """
        return self._owner._run(self._next(timeout))

    async def _next(self, timeout: float | None) -> Message:
        async with asyncio.timeout(timeout):  # cancelling the wait keeps the next message
            try:
                return await anext(self.subscription)
            except StopAsyncIteration:
                raise EOFError("the subscription has ended") from None

    def unsubscribe(self) -> None:
        """See :meth:`Subscription.unsubscribe`."""
        self._owner._run(self.subscription.unsubscribe())
