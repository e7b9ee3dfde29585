"""A message on a topic, encoded at most once per wire encoding.

Fan-out asks every subscriber's codec for the publication's frame; the first
asker pays for the encoding and every later subscriber on the same codec gets
the same bytes object. A publication shipped between nodes keeps its payload
as given (bytes stay bytes, JSON-compatible values stay values).
"""

from __future__ import annotations

from typing import Any

import msgspec

from wsgate.protocol.codec import JSON, Codec
from wsgate.protocol.messages import Msg, payload_fields

__all__ = ["Encoded", "Publication"]


class Encoded:
    """A server message encoded lazily, at most once per codec.

    Args:
        message: the message to send to many connections.
    """

    __slots__ = ("_by_codec", "message")

    def __init__(self, message: msgspec.Struct) -> None:
        self.message = message
        self._by_codec: dict[Codec, bytes] = {}

    def frame(self, codec: Codec) -> bytes:
        """The message encoded for ``codec`` (cached).

        Raises:
            TypeError: the payload cannot be represented in this encoding.
        """
        encoded = self._by_codec.get(codec)
        if encoded is None:
            encoded = self._by_codec[codec] = codec.encode(self.message)
        return encoded


class Publication:
    """One message on one topic.

    Args:
        topic: the concrete topic (validated by the caller).
        payload: bytes (sent as ``bin``) or a JSON-compatible value (``data``).
    """

    __slots__ = ("_json", "_other", "payload", "topic")

    def __init__(self, topic: str, payload: Any) -> None:
        self.topic = topic
        self.payload = payload
        self._json: bytes | None = None
        self._other: dict[Codec, bytes] | None = None

    def __repr__(self) -> str:
        return f"<Publication {self.topic!r}>"

    def frame(self, codec: Codec) -> bytes:
        """The encoded ``msg`` message for ``codec`` (cached).

        Raises:
            TypeError: the payload cannot be represented in this encoding.
        """
        if codec is JSON:
            if self._json is None:
                self._json = self._encode(codec)
            return self._json
        if self._other is None:
            self._other = {}
        encoded = self._other.get(codec)
        if encoded is None:
            encoded = self._other[codec] = self._encode(codec)
        return encoded

    def _encode(self, codec: Codec) -> bytes:
        data, binary = payload_fields(self.payload)
        return codec.encode(Msg(topic=self.topic, data=data, bin=binary))
