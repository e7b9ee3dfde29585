"""Authentication: turning a client's token into an :class:`Identity`.

An :class:`Authenticator` receives an :class:`AuthRequest` (the token plus the
handshake's headers, query and peer address) and returns the :class:`Identity`
the connection runs as, or raises :class:`~wsgate.errors.AuthError`.

Three authenticators ship with wsgate:

* :class:`JWTAuthenticator` verifies JSON Web Tokens (HS256 with a shared
  secret, RS256 or ES256 with a public key). Grants come from the token's
  claims and default to nothing: a token without a ``subscribe`` claim may not
  subscribe to anything.
* :class:`AnonymousAuthenticator` accepts everyone with fixed grants; use it only
  when anonymous access is explicitly wanted.
* :class:`ChainAuthenticator` tries several in turn (JWT, then anonymous).

Token claims understood by :class:`JWTAuthenticator` (and written by
:func:`mint_token`)::

    sub        user id, non-empty string (required)
    exp        expiry, unix time (required unless require_exp=False)
    subscribe  list of patterns the client may subscribe to
    publish    list of patterns the client may publish to
    call       list of method-name patterns the client may call
    channels   list of patterns subscribed automatically at connect; each must
               be covered by a ``subscribe`` grant
    cid        connection id the client may claim: 1-128 of [A-Za-z0-9._:@-]
    meta       object, shown in connection info

Patterns use the topic syntax of :mod:`wsgate.topics` (``*`` one token, ``>``
one or more trailing tokens). Error messages are short, fixed phrases that are
safe to log and to send to the client: they never contain the token, the secret,
or claim values.

:class:`OriginPolicy` decides which browser origins may open a WebSocket (the
defence against cross-site WebSocket hijacking).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import InvalidSubjectError

from wsgate.errors import AuthError, ConfigError, InvalidState, InvalidTopic, TokenExpired
from wsgate.topics import covers, validate_pattern

__all__ = [
    "MAX_TOKEN_LENGTH",
    "AnonymousAuthenticator",
    "AuthRequest",
    "Authenticator",
    "ChainAuthenticator",
    "Identity",
    "JWTAuthenticator",
    "OriginPolicy",
    "TokenExpired",
    "mint_token",
]

MAX_TOKEN_LENGTH: Final = 16_384
"""Longest token (in characters) :class:`JWTAuthenticator` will try to decode."""

_GRANT_CLAIMS: Final = ("subscribe", "publish", "call", "channels")
_RESERVED_CLAIMS: Final = frozenset({"sub", "exp", "iat", "cid", *_GRANT_CLAIMS})
_CONNECTION_ID_RE: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

# Minimum HMAC key length per algorithm: the digest size (RFC 7518 section 3.2).
_HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_MIN_RSA_BITS: Final = 2048


# -- identity ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to and what it may do.

    Grants are patterns in the topic syntax of :mod:`wsgate.topics`. Nothing is
    allowed unless some grant allows it.

    Attributes:
        user: the user id; None only for anonymous identities.
        connection_id: an id the client may claim for its connection (a device
            serial, say); None lets the server assign one.
        subscribe: grant patterns for subscribing.
        publish: grant patterns for publishing.
        call: grant patterns for the method names the client may call.
        channels: subscriptions made automatically at connect. Authenticators
            check that ``subscribe`` grants cover each of them.
        expires_at: unix time after which the server closes the connection;
            None for no expiry.
        meta: free information shown in connection info.
    """

    user: str | None
    connection_id: str | None = None
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    expires_at: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        """True when the identity belongs to no user."""
        return self.user is None

    def can_subscribe(self, pattern: str) -> bool:
        """Tell whether the identity may subscribe to ``pattern``.

        Args:
            pattern: a topic or pattern, already validated by the caller.

        Returns:
            True when some ``subscribe`` grant covers every topic the pattern
            matches (``orders.>`` covers ``orders.*.created``; ``orders.*`` does
            not cover ``orders.>``).
        """
        return any(covers(grant, pattern) for grant in self.subscribe)

    def can_publish(self, topic: str) -> bool:
        """Tell whether the identity may publish to ``topic``.

        Args:
            topic: a concrete topic, already validated by the caller.

        Returns:
            True when some ``publish`` grant matches the topic. (Coverage is
            checked, which equals matching for concrete topics and keeps a
            wildcard that slipped through from reaching beyond the grants.)
        """
        return any(covers(grant, topic) for grant in self.publish)

    def can_call(self, method: str) -> bool:
        """Tell whether the identity may call ``method``.

        Args:
            method: a dotted method name, already validated by the caller.

        Returns:
            True when some ``call`` grant matches (covers) the method name.
        """
        return any(covers(grant, method) for grant in self.call)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an authenticator gets to look at.

    Attributes:
        token: the credential, from ``Authorization: Bearer``, the ``token`` query
            parameter, or the first ``auth`` message; None when the client sent none.
        headers: the handshake's HTTP headers, names lower-cased.
        query: the handshake's query parameters.
        remote_address: the peer's address, when known.
    """

    token: str | None
    headers: Mapping[str, str]
    query: Mapping[str, str]
    remote_address: str | None = None

    def __repr__(self) -> str:
        """Return a representation without the token, headers or query (they hold credentials)."""
        shown = "None" if self.token is None else "<redacted>"
        return f"AuthRequest(token={shown}, remote_address={self.remote_address!r})"


@runtime_checkable
class Authenticator(Protocol):
    """Turns an :class:`AuthRequest` into an :class:`Identity`."""

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Authenticate a connection.

        Args:
            request: the token and handshake details.

        Returns:
            The identity the connection runs as.

        Raises:
            AuthError: the request is not acceptable; :class:`TokenExpired` when
                the only problem is that the token has expired.
        """
        ...


# -- shared validation ------------------------------------------------------------


def _check_patterns(name: str, value: object) -> tuple[str, ...]:
    """Validate one grant claim; raise :class:`ValueError` with a safe message."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list of patterns")
    out: dict[str, None] = {}
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{name}[{index}] must be a string")
        try:
            validate_pattern(item)
        except InvalidTopic:
            raise ValueError(f"{name}[{index}] is not a valid pattern") from None
        out[item] = None
    return tuple(out)


def _check_channels(channels: tuple[str, ...], subscribe: tuple[str, ...]) -> None:
    """Check that ``subscribe`` grants cover every channel; raise :class:`ValueError`."""
    for index, channel in enumerate(channels):
        if not any(covers(grant, channel) for grant in subscribe):
            raise ValueError(f"channels[{index}] is not covered by a subscribe grant")


def _check_connection_id(value: object) -> str:
    """Validate a claimable connection id; raise :class:`ValueError`."""
    if not isinstance(value, str) or not _CONNECTION_ID_RE.fullmatch(value):
        raise ValueError("cid must be 1-128 characters of [A-Za-z0-9._:@-]")
    return value


def _check_hmac_secret(secret: str, algorithms: Sequence[str]) -> None:
    """Raise :class:`ConfigError` when ``secret`` is unusable for the HS algorithms."""
    if not isinstance(secret, str):
        raise ConfigError("secret must be a string")
    size = len(secret.encode("utf-8"))
    for algorithm in algorithms:
        needed = _HMAC_MIN_BYTES[algorithm]
        if size < needed:
            raise ConfigError(
                f"secret is {size} bytes; {algorithm} needs at least {needed} bytes "
                "(RFC 7518 section 3.2)"
            )
    try:
        jwt.get_algorithm_by_name("HS256").prepare_key(secret)
    except jwt.InvalidKeyError:
        raise ConfigError(
            "secret looks like a PEM/SSH/JWK key; HMAC needs a random shared secret"
        ) from None


def _algorithm_list(algorithms: Sequence[str]) -> tuple[str, ...]:
    names = (algorithms,) if isinstance(algorithms, str) else tuple(algorithms)
    if not names:
        raise ConfigError("algorithms must name at least one algorithm")
    for name in names:
        if name not in _HMAC_MIN_BYTES and name not in _RSA_ALGORITHMS and name not in _EC_CURVES:
            raise ConfigError(
                f"unsupported JWT algorithm {name!r}; use HS256/384/512, RS256/384/512, "
                "PS256/384/512 or ES256/384/512"
            )
    return names


_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _load_public_key(pem: str) -> _PublicKey:
    data = pem.encode("utf-8")
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                "public_key is not a PEM public key or certificate "
                "(a private key does not belong on the gateway)"
            ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigError(f"RSA public key has {key.key_size} bits; at least 2048 needed")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    raise ConfigError("public_key must be an RSA or EC (P-256/P-384/P-521) key")


def _usable_with(key: _PublicKey, algorithm: str) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return algorithm in _RSA_ALGORITHMS
    curve = _EC_CURVES.get(algorithm)
    return curve is not None and isinstance(key.curve, curve)


# -- JWT --------------------------------------------------------------------------


class JWTAuthenticator:
    """Verifies JSON Web Tokens and builds identities from their claims.

    Exactly one key is configured: a shared ``secret`` for HS256/HS384/HS512, or a
    PEM ``public_key`` (or certificate) for RS*/PS* (RSA key) or ES* (EC key). The
    accepted algorithms are pinned at construction; the token's ``alg`` header
    only selects among them, so ``none`` and algorithm-confusion tokens (HS256
    signed with the public key) are refused. With a public key, algorithms that
    the key cannot verify are dropped (so ``("RS256", "ES256")`` works with
    either key type).

    ``Identity.expires_at`` is the token's ``exp`` plus ``leeway``: the moment
    this authenticator would itself stop accepting the token.
    """

    __slots__ = ("_algorithms", "_audience", "_decoder", "_issuer", "_key", "_leeway")

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        require_exp: bool = True,
    ) -> None:
        """Configure the verifier.

        Args:
            secret: HMAC secret for HS* algorithms, at least as many bytes as
                the digest (32 for HS256).
            public_key: PEM public key or certificate for RS*, PS* or ES*.
            algorithms: the algorithms accepted; all HS* (with ``secret``) or all
                asymmetric (with ``public_key``; those the key cannot verify are
                dropped, but at least one must remain).
            audience: when set, the token's ``aud`` must contain it. When None,
                tokens carrying an ``aud`` claim are refused.
            issuer: when set, the token's ``iss`` must equal it.
            leeway: seconds of clock skew tolerated on ``exp`` and ``nbf`` (a
                future ``iat`` is accepted).
            require_exp: refuse tokens without ``exp``.

        Raises:
            ConfigError: no key or both keys, a short or key-like secret, an
                unusable public key, or algorithms that do not fit the key.
        """
        names = _algorithm_list(algorithms)
        hmac_names = [n for n in names if n in _HMAC_MIN_BYTES]
        if secret is None and public_key is None:
            raise ConfigError("JWT authentication needs a secret or a public_key")
        if secret is not None and public_key is not None:
            raise ConfigError("give either a secret (HS*) or a public_key (RS*/ES*), not both")
        key: str | _PublicKey
        if secret is not None:
            if len(hmac_names) != len(names):
                raise ConfigError(
                    "a secret only works with HS256/HS384/HS512; use public_key for RS*/ES*"
                )
            _check_hmac_secret(secret, names)
            key = secret
        else:
            assert public_key is not None
            if hmac_names:
                raise ConfigError(
                    f"{hmac_names[0]} cannot be used with a public_key: it would treat the "
                    "key as an HMAC secret; pass algorithms such as ('RS256',) or ('ES256',)"
                )
            if not isinstance(public_key, str):
                raise ConfigError("public_key must be a PEM string")
            key = _load_public_key(public_key)
            usable = tuple(n for n in names if _usable_with(key, n))
            if not usable:
                raise ConfigError(f"the public key cannot verify any of {', '.join(names)}")
            names = usable
        if not math.isfinite(leeway) or leeway < 0:
            raise ConfigError("leeway must be a finite number of seconds >= 0")
        if audience is not None and not audience:
            raise ConfigError("audience must be a non-empty string or None")
        if issuer is not None and not issuer:
            raise ConfigError("issuer must be a non-empty string or None")
        self._key = key
        self._algorithms = list(names)
        self._audience = audience
        self._issuer = issuer
        self._leeway = float(leeway)
        self._decoder = jwt.PyJWT(
            options={
                "require": ["sub", "exp"] if require_exp else ["sub"],
                "verify_signature": True,
                # exp is checked by _expires_at: PyJWT int()s it, taking "123" and true.
                "verify_exp": False,
                "verify_nbf": True,
                # A future iat is not an error (RFC 7519 4.1.6): refusing it would
                # break fresh tokens whenever the issuer's clock is slightly ahead.
                # nbf is the claim for "not yet"; _identity checks iat's type.
                "verify_iat": False,
                "verify_aud": True,
                "verify_iss": True,
                "verify_sub": True,
                "enforce_minimum_key_length": True,
            }
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this authenticator accepts."""
        return tuple(self._algorithms)

    def __repr__(self) -> str:
        """Return a representation without key material."""
        return (
            f"JWTAuthenticator(algorithms={self._algorithms!r}, audience={self._audience!r}, "
            f"issuer={self._issuer!r})"
        )

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Verify ``request.token`` and build the identity from its claims.

        Args:
            request: the request; only ``token`` is looked at.

        Returns:
            The identity described by the token.

        Raises:
            TokenExpired: the token is genuine but expired.
            AuthError: the token is missing, not a JWT, wrongly signed, for
                another audience or issuer, or its claims are malformed.
        """
        return self.verify(request.token)

    def verify(self, token: str | None) -> Identity:
        """Verify a token synchronously (see :meth:`authenticate`).

        Args:
            token: the encoded JWT, or None.

        Returns:
            The identity described by the token.

        Raises:
            TokenExpired: the token is genuine but expired.
            AuthError: any other reason to refuse the token.
        """
        if not token or not isinstance(token, str):
            raise AuthError("token missing")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("token too large")
        if not token.isascii():
            # A compact JWT is base64url and dots; anything else cannot verify
            # (and a lone surrogate would not even encode to UTF-8 in PyJWT).
            raise AuthError("malformed token")
        claims = self._decode(token)
        try:
            return self._identity(claims)
        except ValueError as exc:
            raise AuthError(f"malformed claims: {exc}") from None

    def _decode(self, token: str) -> dict[str, Any]:
        # Each PyJWT error becomes a fixed message; ``from None`` keeps PyJWT's
        # own text (and anything it might quote) out of logged tracebacks.
        try:
            claims = self._decoder.decode(
                token,
                key=self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm not allowed") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid issuer") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"malformed claims: {exc.claim} missing") from None
        except InvalidSubjectError:
            raise AuthError("malformed claims: sub must be a non-empty string") from None
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        return claims

    def _expires_at(self, claims: Mapping[str, Any]) -> float | None:
        """Check ``exp`` (presence is PyJWT's job); return it plus the leeway."""
        if "exp" not in claims:
            return None
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            raise ValueError("exp must be a number")
        expires_at = float(exp) + self._leeway
        if expires_at <= time.time():
            raise TokenExpired("token expired")
        return expires_at

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        expires_at = self._expires_at(claims)
        user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise ValueError("sub must be a non-empty string")
        iat = claims.get("iat")
        if iat is not None and (isinstance(iat, bool) or not isinstance(iat, int | float)):
            raise ValueError("iat must be a number")
        grants = {
            name: _check_patterns(name, claims[name]) if name in claims else ()
            for name in _GRANT_CLAIMS
        }
        _check_channels(grants["channels"], grants["subscribe"])
        connection_id = _check_connection_id(claims["cid"]) if "cid" in claims else None
        meta: Mapping[str, Any] = MappingProxyType({})
        if "meta" in claims:
            if not isinstance(claims["meta"], dict):
                raise ValueError("meta must be an object")
            meta = MappingProxyType(dict(claims["meta"]))
        return Identity(
            user=user,
            connection_id=connection_id,
            subscribe=grants["subscribe"],
            publish=grants["publish"],
            call=grants["call"],
            channels=grants["channels"],
            expires_at=expires_at,
            meta=meta,
        )


def mint_token(
    secret: str,
    *,
    user: str,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    call: Sequence[str] = (),
    channels: Sequence[str] = (),
    connection_id: str | None = None,
    ttl: float | None = 3600,
    algorithm: str = "HS256",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Create a token that :class:`JWTAuthenticator` with the same secret accepts.

    Args:
        secret: the shared HMAC secret (at least 32 bytes for HS256).
        user: the ``sub`` claim.
        subscribe: subscribe grant patterns.
        publish: publish grant patterns.
        call: method-name grant patterns.
        channels: automatic subscriptions; each must be covered by ``subscribe``.
        connection_id: the ``cid`` claim, if the client may claim a connection id.
        ttl: seconds until ``exp``; None for a token without ``exp`` (only
            accepted by authenticators with ``require_exp=False``).
        algorithm: HS256, HS384 or HS512.
        extra: further claims (``aud``, ``iss``, ``meta``, ``nbf``, ...); they
            may not override the claims set from the other arguments.

    Returns:
        The encoded token.

    Raises:
        ConfigError: a non-HS algorithm or an unusable secret.
        InvalidTopic: a grant or channel is not a valid pattern.
        InvalidState: another argument is invalid (empty user, channel not
            covered, bad connection id, ttl <= 0, reserved claim in ``extra``).
    """
    if algorithm not in _HMAC_MIN_BYTES:
        raise ConfigError(f"mint_token signs with HS256/HS384/HS512 only, not {algorithm!r}")
    _check_hmac_secret(secret, (algorithm,))
    if not isinstance(user, str) or not user:
        raise InvalidState("user must be a non-empty string")
    grants: dict[str, tuple[str, ...]] = {}
    for name, value in zip(_GRANT_CLAIMS, (subscribe, publish, call, channels), strict=True):
        items = (value,) if isinstance(value, str) else tuple(value)
        try:
            grants[name] = _check_patterns(name, items)
        except ValueError as exc:
            raise InvalidTopic(str(exc)) from None
    try:
        _check_channels(grants["channels"], grants["subscribe"])
        if connection_id is not None:
            _check_connection_id(connection_id)
    except ValueError as exc:
        raise InvalidState(str(exc)) from None
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now}
    if ttl is not None:
        if not math.isfinite(ttl) or ttl <= 0:
            raise InvalidState("ttl must be a positive number of seconds or None")
        claims["exp"] = now + max(1, math.ceil(ttl))
    for name, patterns in grants.items():
        if patterns:
            claims[name] = list(patterns)
    if connection_id is not None:
        claims["cid"] = connection_id
    if extra:
        clash = sorted(_RESERVED_CLAIMS.intersection(extra))
        if clash:
            raise InvalidState(f"extra may not set {', '.join(clash)}")
        if "meta" in extra and not isinstance(extra["meta"], Mapping):
            raise InvalidState("meta must be a mapping")
        claims.update({k: dict(v) if k == "meta" else v for k, v in extra.items()})
    return jwt.encode(claims, secret, algorithm=algorithm)


# -- anonymous and chains ---------------------------------------------------------


class AnonymousAuthenticator:
    """Accepts every request as an anonymous identity with fixed grants.

    The token is ignored. Use only when anonymous access is explicitly
    configured; put it last in a :class:`ChainAuthenticator`.
    """

    __slots__ = ("_identity",)

    def __init__(
        self,
        *,
        subscribe: Sequence[str] = (">",),
        publish: Sequence[str] = (),
        call: Sequence[str] = (),
    ) -> None:
        """Fix the grants of anonymous connections.

        Args:
            subscribe: subscribe grant patterns (default: everything).
            publish: publish grant patterns (default: nothing).
            call: method-name grant patterns (default: nothing).

        Raises:
            ConfigError: a grant is not a valid pattern.
        """
        grants: list[tuple[str, ...]] = []
        for name, value in (("subscribe", subscribe), ("publish", publish), ("call", call)):
            items = (value,) if isinstance(value, str) else tuple(value)
            try:
                grants.append(_check_patterns(f"anonymous {name}", items))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self._identity = Identity(
            user=None,
            subscribe=grants[0],
            publish=grants[1],
            call=grants[2],
            meta=MappingProxyType({}),
        )

    def __repr__(self) -> str:
        """Return a representation showing the grants."""
        i = self._identity
        return (
            f"AnonymousAuthenticator(subscribe={i.subscribe!r}, publish={i.publish!r}, "
            f"call={i.call!r})"
        )

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Return the anonymous identity.

        Args:
            request: ignored.

        Returns:
            An identity with ``user=None`` and the configured grants.
        """
        return self._identity


class ChainAuthenticator:
    """Tries authenticators in order; the first success wins.

    A failure moves on to the next authenticator, so ``ChainAuthenticator(jwt,
    AnonymousAuthenticator())`` lets clients without a token in anonymously,
    and two JWT authenticators allow key rotation. Two exceptions: a
    :class:`TokenExpired` is raised at once (the token was genuine, so no other
    authenticator should reinterpret it and the client should refresh it rather
    than silently drop to anonymous), and errors other than
    :class:`~wsgate.errors.AuthError` propagate at once (they are bugs). When
    every authenticator fails, the first failure is raised.
    """

    __slots__ = ("_authenticators",)

    def __init__(self, *authenticators: Authenticator) -> None:
        """Set the order.

        Args:
            *authenticators: tried first to last.

        Raises:
            ConfigError: no authenticators, or one without ``authenticate``.
        """
        if not authenticators:
            raise ConfigError("ChainAuthenticator needs at least one authenticator")
        for authenticator in authenticators:
            if not isinstance(authenticator, Authenticator):
                raise ConfigError(f"{authenticator!r} is not an Authenticator")
        self._authenticators = authenticators

    @property
    def authenticators(self) -> tuple[Authenticator, ...]:
        """The authenticators, in the order they are tried."""
        return self._authenticators

    def __repr__(self) -> str:
        """Return a representation listing the chain."""
        return f"ChainAuthenticator{self._authenticators!r}"

    async def authenticate(self, request: AuthRequest) -> Identity:
        """Return the identity from the first authenticator that accepts the request.

        Args:
            request: passed unchanged to each authenticator.

        Returns:
            The first identity obtained.

        Raises:
            TokenExpired: an authenticator found the token genuine but expired.
            AuthError: every authenticator refused; the first refusal.
        """
        first: AuthError | None = None
        for authenticator in self._authenticators:
            try:
                return await authenticator.authenticate(request)
            except TokenExpired:
                raise
            except AuthError as exc:
                if first is None:
                    first = exc
        assert first is not None
        raise first


# -- origins ----------------------------------------------------------------------

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME_RE: Final = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST_RE: Final = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*"
)
_IPV6_RE: Final = re.compile(r"\[[0-9a-f:.]+\]")

_Origin = tuple[str, str, int | None]
"""(scheme, host, port): lower-cased, port defaulted when the scheme has one."""


def _split_host_port(text: str) -> tuple[str, int | None] | None:
    """Split ``host[:port]`` (lower-cased input); None when malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        if not _IPV6_RE.fullmatch(host):
            return None
    else:
        host, sep, port_text = text.partition(":")
        rest = sep + port_text
        if not _HOST_RE.fullmatch(host):
            return None
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii():
        return None
    port = int(rest[1:])
    if not 0 < port < 65536:
        return None
    return host, port


def _parse_origin(text: str, *, allow_wildcard: bool = False) -> tuple[_Origin, bool] | None:
    """Parse ``scheme://host[:port]``; return (origin, wildcard) or None when malformed.

    With ``allow_wildcard``, a leading ``*.`` label is accepted and stripped,
    and the returned flag says it was there.
    """
    text = text.strip().lower()
    if text.endswith("/"):
        text = text[:-1]
    scheme, sep, rest = text.partition("://")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        return None
    wildcard = False
    if allow_wildcard and rest.startswith("*."):
        wildcard, rest = True, rest[2:]
    parsed = _split_host_port(rest)
    if parsed is None:
        return None
    host, port = parsed
    if wildcard and host.startswith("["):
        return None
    return (scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)), wildcard


class OriginPolicy:
    """Decides which ``Origin`` headers may open a WebSocket.

    Allowed are: requests without an ``Origin`` header (non-browser clients);
    same-origin requests (the origin's host and port equal the ``Host``
    header's); and origins matching an entry of ``allowed``:

    * ``"*"``: any origin except ``null``;
    * ``"https://app.example.com"`` (optionally ``:port``): that origin, compared
      case-insensitively with default ports (80, 443) normalised;
    * ``"https://*.example.com"``: any subdomain of ``example.com`` at any depth
      with that scheme and port, but not ``example.com`` itself;
    * ``"null"``: the opaque ``null`` origin (sandboxed frames, ``file:``),
      which nothing else allows.

    Everything else, including malformed origins, is denied.
    """

    __slots__ = ("_any", "_entries", "_exact", "_null", "_suffixes")

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        """Compile the allow-list.

        Args:
            allowed: entries as described in the class docstring.

        Raises:
            ConfigError: an entry is not ``*``, ``null`` or a ``scheme://host[:port]``
                origin with at most a leading ``*.`` wildcard label.
        """
        entries = (allowed,) if isinstance(allowed, str) else tuple(allowed)
        self._entries = entries
        self._any = False
        self._null = False
        self._exact: set[_Origin] = set()
        self._suffixes: set[_Origin] = set()
        for entry in entries:
            if not isinstance(entry, str) or not entry.isascii():
                raise ConfigError(
                    f"allowed origin {entry!r} must be an ASCII string (use punycode for IDNs)"
                )
            normalised = entry.strip().lower()
            if normalised == "*":
                self._any = True
                continue
            if normalised == "null":
                self._null = True
                continue
            parsed = _parse_origin(normalised, allow_wildcard=True)
            if parsed is None:
                raise ConfigError(
                    f"allowed origin {entry!r} is not '*', 'null' or scheme://host[:port] "
                    "(a wildcard may only be a leading '*.' label)"
                )
            origin, wildcard = parsed
            (self._suffixes if wildcard else self._exact).add(origin)

    def __repr__(self) -> str:
        """Return a representation listing the allow-list entries."""
        return f"OriginPolicy({list(self._entries)!r})"

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Tell whether a handshake with this ``Origin`` may proceed.

        Args:
            origin: the ``Origin`` header, None when absent.
            host: the ``Host`` header, None when absent.

        Returns:
            True when the origin is allowed.
        """
        if origin is None:
            return True
        text = origin.strip().lower()
        if text == "null":
            return self._null
        parsed = _parse_origin(text)
        if parsed is None:
            return False
        key = parsed[0]
        scheme, origin_host, origin_port = key
        if host is not None:
            request = _split_host_port(host.strip().lower())
            if request is not None:
                request_host, request_port = request
                if request_port is None:
                    request_port = _DEFAULT_PORTS.get(scheme)
                if (request_host, request_port) == (origin_host, origin_port):
                    return True
        if self._any or key in self._exact:
            return True
        if origin_host.startswith("["):
            return False
        labels = origin_host.split(".")
        for i in range(1, len(labels)):
            if (scheme, ".".join(labels[i:]), origin_port) in self._suffixes:
                return True
        return False
