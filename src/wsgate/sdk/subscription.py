"""What a client's iterators read: subscriptions and push streams.

Each iterator owns a bounded :class:`Inbox`. When a reader falls behind, the
oldest buffered item is dropped (and counted) instead of blocking: the same
socket carries every answer the client waits for, and delivery is at most once
anyway (docs/protocol.md section 1).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from wsgate.errors import InvalidState

if TYPE_CHECKING:
    from wsgate.sdk.client import Client

__all__ = ["Inbox", "Message", "Subscription"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    """A publication as a subscriber receives it.

    Attributes:
        topic: the concrete topic it was published to (not the subscribed pattern).
        data: the payload; bytes when it was published as bytes (``bin``).
    """

    topic: str
    data: Any


class Inbox(Generic[T]):
    """A bounded buffer read as an async iterator; when full, the oldest item goes.

    Args:
        max_items: how many items it holds before dropping.
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise InvalidState("max_pending must be at least 1")
        self._items: deque[T] = deque()
        self._max = max_items
        self._event = asyncio.Event()
        self._error: BaseException | None = None
        self.ended = False
        """True once :meth:`end` was called."""
        self.dropped = 0
        """Items dropped because the reader was ``max_items`` behind."""

    def put(self, item: T) -> None:
        """Buffer ``item`` (ignored once ended)."""
        if self.ended:
            return
        if len(self._items) >= self._max:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._event.set()

    def end(self, error: BaseException | None = None, *, discard: bool = False) -> None:
        """No more items: readers get what is buffered (unless ``discard``), then ``error``.

        Without an error, iteration simply stops. Only the first call counts.
        """
        if self.ended:
            return
        self.ended, self._error = True, error
        if discard:
            self._items.clear()
        self._event.set()

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self.ended:
                error, self._error = self._error, None  # raised once, then exhausted
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()  # cancelling this wait loses no item
        return self._items.popleft()


class Subscription:
    """The publications matching one pattern; made by :meth:`Client.subscribe`.

    Await it (``sub = await client.subscribe(p)``) to wait for the server's
    ``ok``; iterate it with ``async for`` (which awaits the ``ok`` first); or use
    it as an async context manager that unsubscribes on exit. Iteration stops
    after :meth:`unsubscribe` or the client's ``close()``, and raises the error
    that ended the client otherwise (:class:`~wsgate.errors.ConnectionClosed`).

    It survives reconnects: the client subscribes again and this iterator goes
    on, without what was published while disconnected.

    Attributes:
        pattern: the subscribed topic or pattern.
        active: True from the server's ``ok`` until it ends.
    """

    def __init__(self, client: Client, pattern: str, max_pending: int) -> None:
        self.pattern = pattern
        self.active = False
        self._client = client
        self._inbox: Inbox[Message] = Inbox(max_pending)
        self._confirmed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} active={self.active}>"

    @property
    def dropped(self) -> int:
        """Publications dropped because the iterator fell ``max_pending`` behind."""
        return self._inbox.dropped

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._confirm().__await__()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._confirmed is None or not self._confirmed.done():
            await self._confirm()
        return await self._inbox.__anext__()

    async def __aenter__(self) -> Subscription:
        return await self._confirm()

    async def __aexit__(self, *exc: object) -> None:
        await self.unsubscribe()

    async def unsubscribe(self) -> None:
        """End the iterator (dropping what it buffered) and unsubscribe. Idempotent.

        The server keeps the pattern while another :class:`Subscription` of the
        same client holds the same string.
        """
        self.active = False
        self._inbox.end(None, discard=True)
        await self._client._unsubscribe(self)

    # -- for the client -------------------------------------------------------------

    def _deliver(self, message: Message) -> None:
        self._inbox.put(message)

    def _end(self, error: BaseException | None) -> None:
        self.active = False
        self._inbox.end(error)

    async def _confirm(self) -> Subscription:
        """Subscribe once; later and concurrent awaits share the outcome."""
        if self._confirmed is None:
            self._confirmed = asyncio.get_running_loop().create_future()
            try:
                await self._client._subscribe(self)
            except BaseException as exc:
                self._end(None)
                error = exc if isinstance(exc, Exception) else InvalidState("subscribe cancelled")
                self._confirmed.set_exception(error)
                self._confirmed.exception()  # retrieved: there may be no other awaiter
                raise
            self.active = not self._inbox.ended  # unless the client ended meanwhile
            self._confirmed.set_result(None)
        else:
            await asyncio.shield(self._confirmed)
        return self
