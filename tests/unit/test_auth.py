"""Tests for wsgate.auth: JWT verification, identities, chains and origin checks."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wsgate.auth import (
    MAX_TOKEN_LENGTH,
    AnonymousAuthenticator,
    Authenticator,
    AuthRequest,
    ChainAuthenticator,
    Identity,
    JWTAuthenticator,
    OriginPolicy,
    TokenExpired,
    mint_token,
)
from wsgate.errors import AuthError, ConfigError, InvalidState, InvalidTopic

SECRET = "test-secret-" + "0123456789abcdef" * 3  # 60 bytes: enough for HS256 and HS384
OTHER_SECRET = "other-secret-" + "fedcba9876543210" * 3


# -- helpers ----------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def request(token: str | None) -> AuthRequest:
    return AuthRequest(token=token, headers={}, query={})


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def hs_token(payload: Mapping[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(dict(payload), secret, algorithm=algorithm)


def raw_hs256(header: Mapping[str, Any], payload: Mapping[str, Any], key: bytes) -> str:
    """Sign by hand (PyJWT refuses PEM keys as HMAC secrets, an attacker does not)."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def hs_auth() -> JWTAuthenticator:
    return JWTAuthenticator(secret=SECRET)


# -- HS256 round trip -------------------------------------------------------------


async def test_mint_token_round_trip(hs_auth: JWTAuthenticator) -> None:
    before = time.time()
    token = mint_token(
        SECRET,
        user="alice",
        subscribe=["orders.>", "chat.*"],
        publish=["chat.*"],
        call=["rpc.orders.*"],
        channels=["orders.eu.created", "chat.lobby"],
        connection_id="device-42:a@b.c",
        ttl=120,
        extra={"meta": {"plan": "pro"}},
    )
    identity = await hs_auth.authenticate(request(token))
    assert identity.user == "alice"
    assert identity.connection_id == "device-42:a@b.c"
    assert identity.subscribe == ("orders.>", "chat.*")
    assert identity.publish == ("chat.*",)
    assert identity.call == ("rpc.orders.*",)
    assert identity.channels == ("orders.eu.created", "chat.lobby")
    assert dict(identity.meta) == {"plan": "pro"}
    assert identity.expires_at is not None
    assert before + 119 <= identity.expires_at <= time.time() + 122
    assert not identity.anonymous


async def test_minimal_token_grants_nothing(hs_auth: JWTAuthenticator) -> None:
    identity = await hs_auth.authenticate(request(mint_token(SECRET, user="bob")))
    assert identity == Identity(
        user="bob", expires_at=identity.expires_at, meta=identity.meta, connection_id=None
    )
    assert not identity.can_subscribe("anything")
    assert not identity.can_publish("anything")
    assert not identity.can_call("anything")
    assert dict(identity.meta) == {}


async def test_duplicate_grants_are_collapsed(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(claims(subscribe=["a.>", "b", "a.>"]))
    identity = await hs_auth.authenticate(request(token))
    assert identity.subscribe == ("a.>", "b")


async def test_meta_is_read_only(hs_auth: JWTAuthenticator) -> None:
    identity = await hs_auth.authenticate(request(hs_token(claims(meta={"k": 1}))))
    with pytest.raises(TypeError):
        identity.meta["k"] = 2  # type: ignore[index]


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_other_hmac_algorithms(algorithm: str) -> None:
    secret = SECRET + "x" * 10  # 70 bytes, enough for HS512
    auth = JWTAuthenticator(secret=secret, algorithms=[algorithm])
    identity = await auth.authenticate(
        request(mint_token(secret, user="u", algorithm=algorithm, subscribe=["a"]))
    )
    assert identity.subscribe == ("a",)


async def test_hs256_token_refused_by_hs512_only_authenticator() -> None:
    secret = SECRET + "x" * 10
    auth = JWTAuthenticator(secret=secret, algorithms=["HS512"])
    with pytest.raises(AuthError, match="algorithm not allowed"):
        await auth.authenticate(request(mint_token(secret, user="u")))


def test_authenticators_satisfy_the_protocol(hs_auth: JWTAuthenticator) -> None:
    assert isinstance(hs_auth, Authenticator)
    assert isinstance(AnonymousAuthenticator(), Authenticator)
    assert isinstance(ChainAuthenticator(hs_auth), Authenticator)
    assert not isinstance(object(), Authenticator)


# -- RS256 / ES256 ----------------------------------------------------------------


async def test_rs256(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["RS256"])
    token = jwt.encode(claims(subscribe=["x.>"]), rsa_key, algorithm="RS256")
    identity = await auth.authenticate(request(token))
    assert identity.user == "alice"
    assert identity.can_subscribe("x.y")


async def test_es256(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = JWTAuthenticator(public_key=public_pem(ec_key), algorithms=["ES256"])
    token = jwt.encode(claims(publish=["x.*"]), ec_key, algorithm="ES256")
    identity = await auth.authenticate(request(token))
    assert identity.can_publish("x.y")


async def test_rs256_and_es256_listed_together_work_with_either_key(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_auth = JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["RS256", "ES256"])
    ec_auth = JWTAuthenticator(public_key=public_pem(ec_key), algorithms=["RS256", "ES256"])
    assert rsa_auth.algorithms == ("RS256",)
    assert ec_auth.algorithms == ("ES256",)
    rs_token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    es_token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert (await rsa_auth.authenticate(request(rs_token))).user == "alice"
    assert (await ec_auth.authenticate(request(es_token))).user == "alice"
    with pytest.raises(AuthError, match="algorithm not allowed"):
        await rsa_auth.authenticate(request(es_token))


async def test_rs256_wrong_key(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["RS256"])
    token = jwt.encode(claims(), other, algorithm="RS256")
    with pytest.raises(AuthError, match="invalid signature") as info:
        await auth.authenticate(request(token))
    assert not isinstance(info.value, TokenExpired)


async def test_certificate_as_public_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    auth = JWTAuthenticator(public_key=pem, algorithms=["ES256"])
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert (await auth.authenticate(request(token))).user == "alice"


# -- expiry -----------------------------------------------------------------------


async def test_expired_token(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(claims(exp=int(time.time()) - 10))
    with pytest.raises(TokenExpired, match=r"^token expired$"):
        await hs_auth.authenticate(request(token))


async def test_leeway_accepts_recently_expired_and_extends_expires_at() -> None:
    exp = int(time.time()) - 10
    auth = JWTAuthenticator(secret=SECRET, leeway=60)
    identity = await auth.authenticate(request(hs_token(claims(exp=exp))))
    assert identity.expires_at == exp + 60


async def test_expired_token_with_bad_signature_is_not_token_expired(
    hs_auth: JWTAuthenticator,
) -> None:
    token = hs_token(claims(exp=int(time.time()) - 10), secret=OTHER_SECRET)
    with pytest.raises(AuthError, match="invalid signature") as info:
        await hs_auth.authenticate(request(token))
    assert not isinstance(info.value, TokenExpired)


async def test_missing_exp(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(claims(exp=_DROP))
    with pytest.raises(AuthError, match="malformed claims: exp missing"):
        await hs_auth.authenticate(request(token))
    lenient = JWTAuthenticator(secret=SECRET, require_exp=False)
    identity = await lenient.authenticate(request(token))
    assert identity.expires_at is None
    assert (await lenient.authenticate(request(mint_token(SECRET, user="u", ttl=None)))).user


async def test_not_yet_valid(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(claims(nbf=int(time.time()) + 600))
    with pytest.raises(AuthError, match="token not yet valid"):
        await hs_auth.authenticate(request(token))
    leeway = JWTAuthenticator(secret=SECRET, leeway=30)
    assert (await leeway.authenticate(request(hs_token(claims(nbf=int(time.time()) + 10))))).user


async def test_issued_in_the_future_accepted(hs_auth: JWTAuthenticator) -> None:
    # The issuer's clock may run slightly ahead; iat is informational.
    token = hs_token(claims(iat=int(time.time()) + 5))
    assert (await hs_auth.authenticate(request(token))).user == "alice"


# -- signatures and algorithms ----------------------------------------------------


async def test_bad_signature(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(claims(), secret=OTHER_SECRET)
    with pytest.raises(AuthError, match=r"^invalid signature$") as info:
        await hs_auth.authenticate(request(token))
    assert not isinstance(info.value, TokenExpired)


async def test_tampered_payload(hs_auth: JWTAuthenticator) -> None:
    header, _, signature = hs_token(claims(subscribe=["a"])).split(".")
    forged = f"{header}.{b64json(claims(subscribe=['>']))}.{signature}"
    with pytest.raises(AuthError, match="invalid signature"):
        await hs_auth.authenticate(request(forged))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_rejected(hs_auth: JWTAuthenticator, alg: str) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims(subscribe=['>']))}."
    with pytest.raises(AuthError):
        await hs_auth.authenticate(request(token))


async def test_alg_none_rejected_by_asymmetric_authenticator(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["RS256"])
    token = f"{b64json({'alg': 'none'})}.{b64json(claims())}."
    with pytest.raises(AuthError, match="algorithm not allowed"):
        await auth.authenticate(request(token))


async def test_algorithm_confusion_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    auth = JWTAuthenticator(public_key=pem, algorithms=["RS256"])
    for key in (pem.encode(), pem.strip().encode()):
        token = raw_hs256({"alg": "HS256", "typ": "JWT"}, claims(subscribe=[">"]), key)
        with pytest.raises(AuthError, match="algorithm not allowed"):
            await auth.authenticate(request(token))


@pytest.mark.parametrize(
    "header",
    [{}, {"alg": ["HS256"]}, {"alg": None}, {"alg": "HS256", "kid": 5}, {"alg": "XX999"}],
)
async def test_odd_headers_rejected(hs_auth: JWTAuthenticator, header: dict[str, Any]) -> None:
    token = raw_hs256(header, claims(), SECRET.encode())
    with pytest.raises(AuthError):
        await hs_auth.authenticate(request(token))


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "a.b", "...", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "é.é.é", "\ud800"],
)
async def test_garbage_tokens(hs_auth: JWTAuthenticator, token: str) -> None:
    with pytest.raises(AuthError) as info:
        await hs_auth.authenticate(request(token))
    assert not isinstance(info.value, TokenExpired)


@pytest.mark.parametrize("token", [None, ""])
async def test_token_missing(hs_auth: JWTAuthenticator, token: str | None) -> None:
    with pytest.raises(AuthError, match=r"^token missing$"):
        await hs_auth.authenticate(request(token))


async def test_token_too_large(hs_auth: JWTAuthenticator) -> None:
    with pytest.raises(AuthError, match="token too large"):
        await hs_auth.authenticate(request("a" * (MAX_TOKEN_LENGTH + 1)))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=8, max_size=300))
def test_arbitrary_text_only_raises_auth_error(token: str) -> None:
    auth = JWTAuthenticator(secret=SECRET)
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    assume(token not in "token missing malformed token invalid signature")
    assert token not in str(info.value)


# -- claims -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (claims(sub=_DROP), "malformed claims: sub missing"),
        (claims(sub=None), "malformed claims: sub missing"),
        (claims(sub=""), "malformed claims: sub must be a non-empty string"),
        (claims(sub=42), "malformed claims: sub must be a non-empty string"),
        (claims(sub=["alice"]), "malformed claims: sub must be a non-empty string"),
        (claims(exp=str(int(time.time()) + 600)), "malformed claims: exp must be a number"),
        (claims(exp=True), "malformed claims: exp must be a number"),
        (claims(exp=None), "malformed claims: exp missing"),
        (claims(exp=[1]), "malformed claims: exp must be a number"),
        (claims(subscribe="orders.>"), "malformed claims: subscribe must be a list of patterns"),
        (claims(subscribe=None), "malformed claims: subscribe must be a list of patterns"),
        (claims(subscribe={"a": 1}), "malformed claims: subscribe must be a list"),
        (claims(publish=[1]), r"malformed claims: publish\[0\] must be a string"),
        (claims(call=["ok", None]), r"malformed claims: call\[1\] must be a string"),
        (claims(channels="a"), "malformed claims: channels must be a list"),
        (claims(subscribe=["orders.>.x"]), r"malformed claims: subscribe\[0\] is not a valid"),
        (claims(subscribe=["a", "or*ders"]), r"malformed claims: subscribe\[1\] is not a valid"),
        (claims(publish=[""]), r"malformed claims: publish\[0\] is not a valid pattern"),
        (claims(call=["a..b"]), r"malformed claims: call\[0\] is not a valid pattern"),
        (claims(subscribe=["a b"]), r"malformed claims: subscribe\[0\] is not a valid pattern"),
        (
            claims(subscribe=["orders.*"], channels=["orders.>"]),
            r"malformed claims: channels\[0\] is not covered by a subscribe grant",
        ),
        (
            claims(subscribe=["orders.>"], channels=["orders.eu", "chat.lobby"]),
            r"malformed claims: channels\[1\] is not covered",
        ),
        (claims(channels=["a"]), r"malformed claims: channels\[0\] is not covered"),
        (
            claims(subscribe=["a"], publish=["b"], channels=["b"]),
            r"malformed claims: channels\[0\] is not covered",
        ),
        (claims(channels=["bad..pattern"]), r"malformed claims: channels\[0\] is not a valid"),
        (claims(cid=12), "malformed claims: cid must be"),
        (claims(cid=""), "malformed claims: cid must be"),
        (claims(cid="a" * 129), "malformed claims: cid must be"),
        (claims(cid="with space"), "malformed claims: cid must be"),
        (claims(cid="slash/no"), "malformed claims: cid must be"),
        (claims(cid="ünïcode"), "malformed claims: cid must be"),
        (claims(cid="line\n"), "malformed claims: cid must be"),
        (claims(meta=["x"]), "malformed claims: meta must be an object"),
        (claims(meta="x"), "malformed claims: meta must be an object"),
        (claims(iat="yesterday"), "malformed claims: iat must be a number"),
        (claims(iat=False), "malformed claims: iat must be a number"),
        (claims(nbf="soon"), "malformed token"),
    ],
)
async def test_malformed_claims(
    hs_auth: JWTAuthenticator, payload: dict[str, Any], message: str
) -> None:
    token = hs_token(payload)
    with pytest.raises(AuthError, match=message) as info:
        await hs_auth.authenticate(request(token))
    assert token not in str(info.value)


@pytest.mark.parametrize("cid", ["a", "A-Z_0.9:x@y", "x" * 128])
async def test_valid_connection_ids(hs_auth: JWTAuthenticator, cid: str) -> None:
    identity = await hs_auth.authenticate(request(hs_token(claims(cid=cid))))
    assert identity.connection_id == cid


async def test_channels_covered_by_wildcards(hs_auth: JWTAuthenticator) -> None:
    token = hs_token(
        claims(
            subscribe=["orders.>", "user.alice.*"], channels=["orders.*.created", "user.alice.x"]
        )
    )
    identity = await hs_auth.authenticate(request(token))
    assert identity.channels == ("orders.*.created", "user.alice.x")


async def test_float_exp_accepted(hs_auth: JWTAuthenticator) -> None:
    exp = time.time() + 600.5
    identity = await hs_auth.authenticate(request(hs_token(claims(exp=exp))))
    assert identity.expires_at == exp


# -- audience and issuer ----------------------------------------------------------


async def test_audience() -> None:
    auth = JWTAuthenticator(secret=SECRET, audience="wsgate")
    ok = await auth.authenticate(request(hs_token(claims(aud="wsgate"))))
    assert ok.user == "alice"
    ok = await auth.authenticate(request(hs_token(claims(aud=["other", "wsgate"]))))
    assert ok.user == "alice"
    with pytest.raises(AuthError, match=r"^invalid audience$"):
        await auth.authenticate(request(hs_token(claims(aud="other"))))
    with pytest.raises(AuthError, match="aud missing"):
        await auth.authenticate(request(hs_token(claims())))


async def test_token_with_audience_refused_when_none_configured(hs_auth: JWTAuthenticator) -> None:
    with pytest.raises(AuthError, match="invalid audience"):
        await hs_auth.authenticate(request(hs_token(claims(aud="somewhere"))))


async def test_issuer() -> None:
    auth = JWTAuthenticator(secret=SECRET, issuer="https://idp.example.com")
    ok = await auth.authenticate(request(hs_token(claims(iss="https://idp.example.com"))))
    assert ok.user == "alice"
    with pytest.raises(AuthError, match=r"^invalid issuer$"):
        await auth.authenticate(request(hs_token(claims(iss="https://evil.example.com"))))
    with pytest.raises(AuthError, match="iss missing"):
        await auth.authenticate(request(hs_token(claims())))


async def test_mint_token_with_audience_and_issuer() -> None:
    auth = JWTAuthenticator(secret=SECRET, audience="a", issuer="i")
    token = mint_token(SECRET, user="u", extra={"aud": "a", "iss": "i"})
    assert (await auth.authenticate(request(token))).user == "u"


# -- messages never leak secrets --------------------------------------------------


async def test_error_messages_do_not_contain_token_or_secret(
    hs_auth: JWTAuthenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    rs_auth = JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["RS256"])
    cases: list[tuple[JWTAuthenticator, str]] = [
        (hs_auth, hs_token(claims(exp=int(time.time()) - 5))),
        (hs_auth, hs_token(claims(), secret=OTHER_SECRET)),
        (hs_auth, hs_token(claims(sub=_DROP))),
        (hs_auth, hs_token(claims(subscribe=["bad..x"]))),
        (hs_auth, hs_token(claims(aud="x"))),
        (hs_auth, hs_token(claims(), algorithm="HS384")),
        (hs_auth, hs_token(claims())[:-3]),
        (hs_auth, "not-a-jwt-at-all"),
        (rs_auth, raw_hs256({"alg": "HS256"}, claims(), public_pem(rsa_key).encode())),
    ]
    for auth, token in cases:
        with pytest.raises(AuthError) as info:
            await auth.authenticate(request(token))
        text = str(info.value)
        assert token not in text
        for part in token.split("."):
            assert len(part) < 8 or part not in text
        assert SECRET not in text
        assert OTHER_SECRET not in text
        # No chained PyJWT exception whose text could end up in a logged traceback.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_reprs_hide_credentials(hs_auth: JWTAuthenticator) -> None:
    token = mint_token(SECRET, user="u")
    req = AuthRequest(
        token=token,
        headers={"authorization": f"Bearer {token}"},
        query={"token": token},
        remote_address="10.0.0.1",
    )
    assert token not in repr(req)
    assert "10.0.0.1" in repr(req)
    assert SECRET not in repr(hs_auth)


def test_config_errors_do_not_contain_secret() -> None:
    short = "s3cr3t-but-short"
    with pytest.raises(ConfigError) as info:
        JWTAuthenticator(secret=short)
    assert short not in str(info.value)
    assert "32 bytes" in str(info.value)


# -- configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a secret or a public_key"),
        ({"secret": "x" * 31}, "secret is 31 bytes; HS256 needs at least 32"),
        ({"secret": "é" * 15}, "secret is 30 bytes"),
        ({"secret": "x" * 40, "algorithms": ["HS384"]}, "HS384 needs at least 48"),
        ({"secret": "x" * 50, "algorithms": ["HS256", "HS512"]}, "HS512 needs at least 64"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "a secret only works with HS"),
        ({"secret": SECRET, "algorithms": ["HS256", "ES256"]}, "a secret only works with HS"),
        ({"secret": SECRET, "algorithms": ["none"]}, "unsupported JWT algorithm"),
        ({"secret": SECRET, "algorithms": []}, "at least one algorithm"),
        ({"secret": SECRET, "algorithms": ["EdDSA"]}, "unsupported JWT algorithm"),
        ({"secret": SECRET, "leeway": -1}, "leeway"),
        ({"secret": SECRET, "leeway": float("inf")}, "leeway"),
        ({"secret": SECRET, "audience": ""}, "audience"),
        ({"secret": SECRET, "issuer": ""}, "issuer"),
        ({"public_key": "not a pem", "algorithms": ["RS256"]}, "not a PEM public key"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JWTAuthenticator(**kwargs)


def test_secret_that_is_a_pem_key_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="looks like a PEM"):
        JWTAuthenticator(secret=public_pem(rsa_key))


def test_secret_and_public_key_together_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="not both"):
        JWTAuthenticator(secret=SECRET, public_key=public_pem(rsa_key), algorithms=["RS256"])


@pytest.mark.parametrize("algorithms", [("HS256",), ("RS256", "HS256")])
def test_hmac_with_public_key_refused(
    rsa_key: rsa.RSAPrivateKey, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError, match="cannot be used with a public_key"):
        JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=algorithms)


def test_default_algorithms_with_public_key_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="HS256 cannot be used with a public_key"):
        JWTAuthenticator(public_key=public_pem(rsa_key))


def test_private_key_as_public_key_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="private key does not belong"):
        JWTAuthenticator(public_key=private_pem(rsa_key), algorithms=["RS256"])


def test_small_rsa_key_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="1024 bits"):
        JWTAuthenticator(public_key=public_pem(small), algorithms=["RS256"])


def test_key_that_fits_no_algorithm_refused(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ConfigError, match="cannot verify any of ES256"):
        JWTAuthenticator(public_key=public_pem(rsa_key), algorithms=["ES256"])
    with pytest.raises(ConfigError, match="cannot verify any of ES384"):
        JWTAuthenticator(public_key=public_pem(ec_key), algorithms=["ES384"])


def test_string_algorithms_taken_as_one_name() -> None:
    assert JWTAuthenticator(secret=SECRET, algorithms="HS256").algorithms == ("HS256",)


# -- mint_token -------------------------------------------------------------------


def test_mint_token_errors() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        mint_token("short", user="u")
    with pytest.raises(ConfigError, match="HS256/HS384/HS512 only"):
        mint_token(SECRET, user="u", algorithm="RS256")
    with pytest.raises(ConfigError, match="HS512 needs at least 64"):
        mint_token(SECRET, user="u", algorithm="HS512")
    with pytest.raises(InvalidState, match="user"):
        mint_token(SECRET, user="")
    with pytest.raises(InvalidTopic, match=r"subscribe\[0\] is not a valid pattern"):
        mint_token(SECRET, user="u", subscribe=["a.>.b"])
    with pytest.raises(InvalidTopic, match=r"call\[1\]"):
        mint_token(SECRET, user="u", call=["ok", "*x"])
    with pytest.raises(InvalidState, match="not covered"):
        mint_token(SECRET, user="u", subscribe=["a.*"], channels=["a.>"])
    with pytest.raises(InvalidState, match="cid"):
        mint_token(SECRET, user="u", connection_id="no spaces")
    with pytest.raises(InvalidState, match="ttl"):
        mint_token(SECRET, user="u", ttl=0)
    with pytest.raises(InvalidState, match="may not set exp, sub"):
        mint_token(SECRET, user="u", extra={"sub": "root", "exp": 1})
    with pytest.raises(InvalidState, match="meta"):
        mint_token(SECRET, user="u", extra={"meta": [1]})


def test_mint_token_claims() -> None:
    token = mint_token(SECRET, user="u", subscribe="a.>", ttl=10.2)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload["subscribe"] == ["a.>"]
    assert payload["exp"] - payload["iat"] == 11
    assert "publish" not in payload
    assert "cid" not in payload
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


# -- Identity ---------------------------------------------------------------------


def test_identity_can_subscribe() -> None:
    identity = Identity(user="u", subscribe=("orders.>", "chat.*"))
    assert identity.can_subscribe("orders.*.created")
    assert identity.can_subscribe("orders.eu.created")
    assert identity.can_subscribe("orders.>")
    assert not identity.can_subscribe("orders")
    assert identity.can_subscribe("chat.lobby")
    assert identity.can_subscribe("chat.*")
    assert not identity.can_subscribe("chat.>")
    assert not identity.can_subscribe("chat.lobby.x")
    assert not identity.can_subscribe(">")
    assert not Identity(user="u", subscribe=("orders.*",)).can_subscribe("orders.>")
    assert Identity(user="u", subscribe=(">",)).can_subscribe("anything.at.*.all")


def test_identity_can_publish() -> None:
    identity = Identity(user="u", publish=("chat.*", "user.alice.>"))
    assert identity.can_publish("chat.lobby")
    assert not identity.can_publish("chat.lobby.x")
    assert identity.can_publish("user.alice.inbox")
    assert not identity.can_publish("user.alice")
    assert not identity.can_publish("user.bob.inbox")
    # A wildcard that slipped past validation must not reach beyond the grants.
    assert not identity.can_publish("user.>")
    assert not identity.can_publish("*.lobby")


def test_identity_can_call() -> None:
    identity = Identity(user="u", call=("orders.get", "chat.*"))
    assert identity.can_call("orders.get")
    assert not identity.can_call("orders.delete")
    assert identity.can_call("chat.send")
    assert not identity.can_call("chat")


def test_identity_defaults() -> None:
    identity = Identity(user=None)
    assert identity.anonymous
    assert identity.connection_id is None
    assert identity.subscribe == identity.publish == identity.call == identity.channels == ()
    assert identity.expires_at is None
    assert dict(identity.meta) == {}
    assert not identity.can_subscribe("a")
    with pytest.raises(AttributeError):
        identity.user = "x"  # type: ignore[misc]


# -- anonymous and chain ----------------------------------------------------------


async def test_anonymous_authenticator() -> None:
    auth = AnonymousAuthenticator()
    for token in (None, "garbage", mint_token(SECRET, user="u")):
        identity = await auth.authenticate(request(token))
        assert identity.user is None
        assert identity.anonymous
        assert identity.can_subscribe("any.thing.>")
        assert not identity.can_publish("any")
        assert not identity.can_call("any")


async def test_anonymous_authenticator_custom_grants() -> None:
    auth = AnonymousAuthenticator(subscribe=["public.>"], publish=["lobby"], call=["ping"])
    identity = await auth.authenticate(request(None))
    assert identity.can_subscribe("public.news")
    assert not identity.can_subscribe("private.x")
    assert identity.can_publish("lobby")
    assert identity.can_call("ping")


def test_anonymous_authenticator_invalid_patterns() -> None:
    with pytest.raises(ConfigError, match=r"anonymous subscribe\[0\]"):
        AnonymousAuthenticator(subscribe=["a..b"])
    with pytest.raises(ConfigError, match=r"anonymous publish\[0\]"):
        AnonymousAuthenticator(publish=[">.x"])


async def test_chain_jwt_then_anonymous(hs_auth: JWTAuthenticator) -> None:
    chain = ChainAuthenticator(hs_auth, AnonymousAuthenticator(subscribe=["public.>"]))
    identity = await chain.authenticate(request(mint_token(SECRET, user="alice")))
    assert identity.user == "alice"
    anonymous = await chain.authenticate(request(None))
    assert anonymous.user is None
    assert anonymous.can_subscribe("public.x")
    # A forged token gets no more than anonymous access.
    forged = await chain.authenticate(request(hs_token(claims(), secret=OTHER_SECRET)))
    assert forged.user is None


async def test_chain_expired_token_does_not_fall_back(hs_auth: JWTAuthenticator) -> None:
    chain = ChainAuthenticator(hs_auth, AnonymousAuthenticator())
    with pytest.raises(TokenExpired):
        await chain.authenticate(request(hs_token(claims(exp=int(time.time()) - 5))))


async def test_chain_key_rotation_and_first_failure(hs_auth: JWTAuthenticator) -> None:
    old = JWTAuthenticator(secret=OTHER_SECRET)
    chain = ChainAuthenticator(hs_auth, old)
    assert (await chain.authenticate(request(mint_token(SECRET, user="new")))).user == "new"
    assert (await chain.authenticate(request(mint_token(OTHER_SECRET, user="old")))).user == "old"
    with pytest.raises(AuthError, match=r"^token missing$"):
        await chain.authenticate(request(None))
    third = SECRET[::-1]
    with pytest.raises(AuthError, match=r"^invalid signature$"):
        await chain.authenticate(request(mint_token(third, user="x")))


async def test_chain_first_failure_is_reraised() -> None:
    class Refuse:
        def __init__(self, message: str) -> None:
            self.message = message
            self.calls = 0

        async def authenticate(self, request: AuthRequest) -> Identity:
            self.calls += 1
            raise AuthError(self.message)

    first, second = Refuse("first"), Refuse("second")
    chain = ChainAuthenticator(first, second)
    with pytest.raises(AuthError, match=r"^first$"):
        await chain.authenticate(request("t"))
    assert first.calls == second.calls == 1


async def test_chain_non_auth_errors_propagate() -> None:
    class Broken:
        async def authenticate(self, request: AuthRequest) -> Identity:
            raise RuntimeError("bug")

    chain = ChainAuthenticator(Broken(), AnonymousAuthenticator())
    with pytest.raises(RuntimeError, match="bug"):
        await chain.authenticate(request(None))


def test_chain_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        ChainAuthenticator()
    with pytest.raises(ConfigError, match="not an Authenticator"):
        ChainAuthenticator(object())  # type: ignore[arg-type]


# -- origins ----------------------------------------------------------------------

ALLOWED = (
    "https://app.example.com",
    "http://localhost:3000",
    "https://*.example.org",
    "HTTPS://Mixed.Example.NET:443",
    "https://*.ports.example:8443",
)


@pytest.mark.parametrize(
    ("allowed", "origin", "host", "expected"),
    [
        # No Origin header: not a browser.
        ((), None, "gw.example.com", True),
        ((), None, None, True),
        # Same origin.
        ((), "https://gw.example.com", "gw.example.com", True),
        ((), "https://gw.example.com", "gw.example.com:443", True),
        ((), "https://GW.Example.com", "gw.example.COM", True),
        ((), "http://gw.example.com:8080", "gw.example.com:8080", True),
        ((), "http://gw.example.com", "gw.example.com:8080", False),
        ((), "https://gw.example.com", "gw.example.com:80", False),
        ((), "http://[::1]:8080", "[::1]:8080", True),
        ((), "https://other.example.com", "gw.example.com", False),
        ((), "https://gw.example.com", None, False),
        ((), "https://gw.example.com", "bad host!", False),
        # Exact entries.
        (ALLOWED, "https://app.example.com", "gw", True),
        (ALLOWED, "https://APP.example.com", "gw", True),
        (ALLOWED, "https://app.example.com:443", "gw", True),
        (ALLOWED, "https://app.example.com/", "gw", True),
        (ALLOWED, "http://app.example.com", "gw", False),
        (ALLOWED, "https://app.example.com:8443", "gw", False),
        (ALLOWED, "https://app.example.com.evil.com", "gw", False),
        (ALLOWED, "https://evilapp.example.com", "gw", False),
        (ALLOWED, "https://x.app.example.com", "gw", False),
        (ALLOWED, "http://localhost:3000", "gw", True),
        (ALLOWED, "http://localhost", "gw", False),
        (ALLOWED, "http://localhost:3001", "gw", False),
        (ALLOWED, "https://mixed.example.net", "gw", True),
        # Wildcard entries.
        (ALLOWED, "https://a.example.org", "gw", True),
        (ALLOWED, "https://a.b.example.org", "gw", True),
        (ALLOWED, "https://A.Example.ORG", "gw", True),
        (ALLOWED, "https://example.org", "gw", False),
        (ALLOWED, "https://evil-example.org", "gw", False),
        (ALLOWED, "https://a.example.org.evil.com", "gw", False),
        (ALLOWED, "http://a.example.org", "gw", False),
        (ALLOWED, "https://a.example.org:444", "gw", False),
        (ALLOWED, "https://a.ports.example:8443", "gw", True),
        (ALLOWED, "https://a.ports.example", "gw", False),
        # Malformed origins.
        (ALLOWED, "", "gw", False),
        (ALLOWED, "app.example.com", "app.example.com", False),
        (ALLOWED, "https://app.example.com/path", "gw", False),
        (ALLOWED, "https://user@app.example.com", "gw", False),
        (ALLOWED, "https://app.example.com:99999", "gw", False),
        (ALLOWED, "https://app.example.com:", "gw", False),
        (ALLOWED, "https://*.example.org", "gw", False),
        (("*",), "https://app.example.com/path", "gw", False),
        # null origins.
        (ALLOWED, "null", "gw", False),
        ((), "null", "null", False),
        (("*",), "null", "gw", False),
        (("null",), "null", "gw", True),
        (("NULL",), "null", "gw", True),
        (("null",), "https://app.example.com", "gw", False),
        # Star.
        (("*",), "https://anything.example", "gw", True),
        (("*",), "chrome-extension://abcdef", "gw", True),
        (("*",), None, None, True),
        # Other schemes compare by scheme too.
        (("chrome-extension://abcdef",), "chrome-extension://abcdef", "gw", True),
        (("chrome-extension://abcdef",), "chrome-extension://abcdeg", "gw", False),
    ],
)
def test_origin_policy(
    allowed: tuple[str, ...], origin: str | None, host: str | None, expected: bool
) -> None:
    assert OriginPolicy(allowed).allows(origin, host) is expected


@pytest.mark.parametrize(
    "entry",
    [
        "app.example.com",
        "*.example.com",
        "https://",
        "https://*",
        "https://app*.example.com",
        "https://a.*.example.com",
        "https://app.example.com/path",
        "https://app.example.com:0",
        "https://bücher.example",
        "https://*.[::1]",
        "",
    ],
)
def test_origin_policy_bad_entries(entry: str) -> None:
    with pytest.raises(ConfigError):
        OriginPolicy([entry])


def test_origin_policy_repr() -> None:
    assert "app.example.com" in repr(OriginPolicy(["https://app.example.com"]))
