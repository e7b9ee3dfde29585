"""The two wire encodings, negotiated as WebSocket subprotocols.

============================  ===========  =====================================
subprotocol                   frames       payloads
============================  ===========  =====================================
``wsgate.v1.json`` (default)  text         ``data`` is JSON; bytes go in ``bin``
                                           as base64
``wsgate.v1.msgpack``         binary       MessagePack; ``bin`` is raw bytes
============================  ===========  =====================================

A frame holds one message (a map) or several packed into one array (the server
packs messages queued for the same connection in the same event-loop tick; see
"Packing" in docs/protocol.md). An array of encoded messages is cheap to build
from already-encoded parts in both encodings, which is why packing uses arrays.

Decoding never lets a library exception escape: anything that is not a valid
message raises :class:`~wsgate.errors.MalformedMessage`,
:class:`~wsgate.errors.InvalidMessage` or :class:`~wsgate.errors.UnknownOp`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from wsgate.errors import InvalidMessage, MalformedMessage, UnknownOp
from wsgate.protocol.messages import MAX_ID, ClientMessage, ServerMessage

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "JSON",
    "MSGPACK",
    "Codec",
    "codec_for_subprotocol",
]

_CLIENT_OPS: Final = frozenset({"auth", "sub", "unsub", "pub", "call", "reply", "ping"})
_SERVER_OPS: Final = frozenset({"welcome", "msg", "push", "req", "ok", "error", "pong"})


class Codec:
    """One wire encoding: encodes messages, decodes and classifies bad input.

    Attributes:
        name: short name (``"json"`` or ``"msgpack"``).
        subprotocol: the WebSocket subprotocol that selects it.
        text: True when frames are text frames (opcode 1), else binary (opcode 2).
    """

    __slots__ = (
        "_client_decoder",
        "_encode",
        "_generic_decode",
        "_server_decoder",
        "name",
        "subprotocol",
        "text",
    )

    def __init__(self, name: str, subprotocol: str, *, text: bool) -> None:
        self.name = name
        self.subprotocol = subprotocol
        self.text = text
        if text:
            self._encode = msgspec.json.Encoder().encode
            self._client_decoder: Any = msgspec.json.Decoder(ClientMessage)
            self._server_decoder: Any = msgspec.json.Decoder(ServerMessage | list[ServerMessage])
            self._generic_decode: Any = msgspec.json.Decoder().decode
        else:
            self._encode = msgspec.msgpack.Encoder().encode
            self._client_decoder = msgspec.msgpack.Decoder(ClientMessage)
            self._server_decoder = msgspec.msgpack.Decoder(ServerMessage | list[ServerMessage])
            self._generic_decode = msgspec.msgpack.Decoder().decode

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    def encode(self, message: msgspec.Struct) -> bytes:
        """Encode one message (either direction).

        Raises:
            TypeError: a payload holds a value the encoding cannot represent.
        """
        try:
            return self._encode(message)
        except msgspec.EncodeError as exc:
            raise TypeError(f"payload cannot be encoded as {self.name}: {exc}") from exc

    def encode_value(self, value: Any) -> bytes:
        """Encode a bare value (used to ship payloads between nodes pre-encoded)."""
        try:
            return self._encode(value)
        except msgspec.EncodeError as exc:
            raise TypeError(f"payload cannot be encoded as {self.name}: {exc}") from exc

    def pack(self, encoded: Sequence[bytes]) -> bytes:
        """Pack several encoded messages into one frame payload (an array)."""
        if self.text:
            return b"[" + b",".join(encoded) + b"]"
        n = len(encoded)
        if n < 16:
            head = bytes((0x90 | n,))
        elif n < 0x10000:
            head = struct.pack(">BH", 0xDC, n)
        else:
            head = struct.pack(">BI", 0xDD, n)
        return head + b"".join(encoded)

    def decode_client(self, payload: bytes) -> ClientMessage:
        """Decode one client message.

        Raises:
            MalformedMessage: not valid JSON/MessagePack, or not a map.
            UnknownOp: a map whose ``op`` is not a client op.
            InvalidMessage: a known op with missing or invalid fields.
        """
        try:
            message: ClientMessage = self._client_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise self._classify(payload, exc, _CLIENT_OPS) from exc
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
            raise MalformedMessage(f"not valid {self.name}") from exc
        return message

    def decode_server(self, payload: bytes) -> list[ServerMessage]:
        """Decode one server frame into its messages (one, or several when packed).

        Raises:
            MalformedMessage, UnknownOp, InvalidMessage: as :meth:`decode_client`.
        """
        try:
            decoded = self._server_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise self._classify(payload, exc, _SERVER_OPS) from exc
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
            raise MalformedMessage(f"not valid {self.name}") from exc
        return decoded if isinstance(decoded, list) else [decoded]

    def _classify(
        self, payload: bytes, exc: msgspec.ValidationError, ops: frozenset[str]
    ) -> Exception:
        """Turn a validation failure into the protocol error it stands for."""
        try:
            raw = self._generic_decode(payload)
        except Exception:  # pragma: no cover - it validated as far as the schema
            return MalformedMessage(f"not valid {self.name}")
        if not isinstance(raw, dict):
            return MalformedMessage("a message must be a map")
        raw_id = raw.get("id")
        request_id = (
            raw_id
            if isinstance(raw_id, int) and not isinstance(raw_id, bool) and 0 <= raw_id <= MAX_ID
            else None
        )
        op = raw.get("op")
        if not isinstance(op, str):
            return InvalidMessage("missing or non-string 'op'", request_id)
        if op not in ops:
            return UnknownOp(op[:64], request_id)
        return InvalidMessage(str(exc), request_id)


JSON: Final = Codec("json", "wsgate.v1.json", text=True)
MSGPACK: Final = Codec("msgpack", "wsgate.v1.msgpack", text=False)
DEFAULT_CODEC: Final = JSON
CODECS: Final = (JSON, MSGPACK)
_BY_SUBPROTOCOL: Final = {c.subprotocol: c for c in CODECS}


def codec_for_subprotocol(offered: Sequence[str]) -> Codec | None:
    """Pick the codec for the subprotocols a client offered, in its order of preference.

    Args:
        offered: the tokens of the ``Sec-WebSocket-Protocol`` request header.

    Returns:
        The first supported codec; :data:`DEFAULT_CODEC` when the client offered
        none (plain WebSocket tools); None when it offered only unsupported ones.
    """
    if not offered:
        return DEFAULT_CODEC
    for token in offered:
        codec = _BY_SUBPROTOCOL.get(token.strip())
        if codec is not None:
            return codec
    return None
