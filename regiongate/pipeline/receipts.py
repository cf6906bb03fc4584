"""Verifiable processing receipts: every routed response carries ``x-regiongate-receipt``, a JWS in compact
form (RFC 7515) signed with Ed25519 (``alg: EdDSA``, RFC 8037), stating which request was served where:

    {"iss": "regiongate", "rid": the gateway's request id, "client_rid": the client's x-request-id (only
     when it sent one; never used as "rid"), "team": ..., "key": key id, "model": ...,
     "endpoint": "global" | "zone:eu" | "region:eu-west-1", "region": served region, "zone": its data zone,
     "route": nearest | spillover | pinned | zone | failover, "tier": default | flex | priority, "iat": unix seconds, "time": ISO-8601 UTC}

Two forms, both checked by ``verify`` (and ``regiongate receipt verify``) offline with the public key:

- **v1, one signature per receipt**: ``header.payload.signature``, a plain JWS (``typ``
  ``regiongate-receipt+jwt``) whose payload is the claims.
- **v2, one signature per batch**: ``header.payload.proof.signature``. The receipts of one event-loop
  iteration (for gRPC unary calls, of a short window: ``ReceiptHook``) are the leaves of a Merkle tree (leaf ``SHA-256(0x00 || claims JSON)``, node ``SHA-256(0x01 ||
  left || right)``, an odd last node carried up unchanged); ``proof`` is the leaf's path to the root, one
  33-byte step per level (``0x00`` + the sibling on the left, or ``0x01`` + the sibling on the right, at most
  32 steps), and ``signature`` is the Ed25519 signature of ``header.b64url(root)`` under a header whose
  ``typ`` is ``regiongate-receipt-batch+jwt`` (a JWS with a detached payload, RFC 7515 appendix F: the
  verifier recomputes the root from the claims and the proof). A batch of one is signed as v1.

A stream that was continued mid-answer on another backend ends with a second receipt (a trailing SSE
comment ``: x-regiongate-receipt <jws>``, gRPC trailing metadata of the same name) that adds ``"hops"``:
every backend that produced part of the answer, in order, ``{"region", "zone", "backend", "reason"}``
(``reason``: "first", or what broke the hop before), so an auditor sees the whole answer stayed in scope.

A stored object's receipt (``object_receipt``) adds ``"object"`` (its id), ``"stored"`` (the region whose
store holds it) and ``"stored_zone"``.

Public keys are published as a JWK Set (``/.well-known/regiongate-keys.json``); ``kid`` is the key's
RFC 7638 thumbprint. Keys live in a directory: ``<kid>.key`` (private, PEM, mode 0600) for the signing key,
``<kid>.jwk`` (public) for every key ever used, and ``current`` naming the signing one. Rotation writes a
new key, points ``current`` at it and deletes the old private key; the old public key stays in the set,
so receipts signed before the rotation still verify.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

if TYPE_CHECKING:
    from regiongate.pipeline.exchange import Inbound, Routed
    from regiongate.pipeline.usage import UsageRecord

HEADER = "x-regiongate-receipt"
JWKS_PATH = "/.well-known/regiongate-keys.json"
TYP = "regiongate-receipt+jwt"
BATCH_TYP = "regiongate-receipt-batch+jwt"  # v2: the signature is over the root of a batch's Merkle tree
MAX_BATCH = 256  # receipts per signature at most (a proof of 8 steps)
# A windowed batch is signed as soon as it holds this many: a signature's share is then under 30k
# instructions per receipt (of about 470k), and waiting for more would save little.
WINDOW_ENOUGH = 16
_MAX_STEPS = 32


class ReceiptError(ValueError):
    """The token is malformed, signed by an unknown key, or its signature does not match."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_decode(text: str, what: str = "the text") -> bytes:
    """Strict: JWS compact form is unpadded base64url with zero unused bits (RFC 7515 section 2), so each
    byte string has exactly one encoding; anything else would let one signature have many spellings."""
    if "=" in text:
        raise ReceiptError(f"{what} is padded with '='; JWS uses unpadded base64url")
    if not _B64URL.match(text):
        raise ReceiptError(f"{what} has characters outside the base64url alphabet (A-Z a-z 0-9 - _)")
    if len(text) % 4 == 1:
        raise ReceiptError(f"{what} has a length no base64url encoding has")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise ReceiptError(f"{what} is not canonical base64url (its unused low bits are not zero)")
    return data


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = b64url(raw)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = b64url(hashlib.sha256(members.encode()).digest())  # RFC 7638 thumbprint
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


@dataclass(frozen=True)
class SigningKey:
    """A signing key. ``sign`` runs libsodium's Ed25519 (PyNaCl): the same signature as OpenSSL's for the
    same key and bytes (Ed25519 signing is deterministic, RFC 8032), in about 55% of its instructions
    (260k against 460k per signature under callgrind here); ``private`` (cryptography) stays the key's
    form on disk and in the JWK."""

    kid: str
    private: Ed25519PrivateKey
    jwk: dict[str, str]
    _sodium: bytes = field(init=False, repr=False, compare=False)  # libsodium's secret key: seed || public

    def __post_init__(self) -> None:
        seed = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        object.__setattr__(self, "_sodium", crypto_sign_seed_keypair(seed)[1])

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature (64 bytes) of ``data``."""
        return crypto_sign(data, self._sodium)[:64]

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        jwk = public_jwk(private.public_key())
        return cls(jwk["kid"], private, jwk)


@functools.lru_cache(maxsize=16)
def _protected(kid: str) -> str:
    """The JWS protected header of ``kid``'s receipts: the same for every receipt it signs."""
    return b64url(orjson.dumps({"alg": "EdDSA", "kid": kid, "typ": TYP}))


@functools.lru_cache(maxsize=16)
def _batch_protected(kid: str) -> str:
    return b64url(orjson.dumps({"alg": "EdDSA", "kid": kid, "typ": BATCH_TYP}))


def sign(key: SigningKey, claims: dict[str, Any]) -> str:
    return _sign_one(key, orjson.dumps(claims))


def _sign_one(key: SigningKey, raw: bytes) -> str:
    header = _protected(key.kid)
    payload = b64url(raw)
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{b64url(key.sign(signing_input))}"


def _leaf(raw: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + raw).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle(leaves: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The root of ``leaves`` and each leaf's proof (its steps to the root, see the module docstring)."""
    proofs = [bytearray() for _ in leaves]
    level = leaves
    under: list[list[int]] = [[i] for i in range(len(leaves))]  # the leaves below each node of the level
    while len(level) > 1:
        up: list[bytes] = []
        up_under: list[list[int]] = []
        for j in range(0, len(level) - 1, 2):
            left, right = level[j], level[j + 1]
            for i in under[j]:
                proofs[i] += b"\x01" + right
            for i in under[j + 1]:
                proofs[i] += b"\x00" + left
            up.append(_node(left, right))
            up_under.append(under[j] + under[j + 1])
        if len(level) % 2:
            up.append(level[-1])
            up_under.append(under[-1])
        level, under = up, up_under
    return level[0], [bytes(p) for p in proofs]


def sign_batch(key: SigningKey, raws: list[bytes]) -> list[str]:
    """One receipt per claims document (JSON bytes), all under one signature (v2; v1 for a batch of one)."""
    if len(raws) == 1:
        return [_sign_one(key, raws[0])]
    root, proofs = merkle([_leaf(r) for r in raws])
    header = _batch_protected(key.kid)
    signature = b64url(key.sign(f"{header}.{b64url(root)}".encode("ascii")))
    return [f"{header}.{b64url(r)}.{b64url(p)}.{signature}" for r, p in zip(raws, proofs, strict=True)]


def _root(raw: bytes, proof: bytes) -> bytes:
    if len(proof) % 33 or len(proof) > 33 * _MAX_STEPS:
        raise ReceiptError(f"the proof is not a whole number of 33-byte steps (at most {_MAX_STEPS})")
    h = _leaf(raw)
    for at in range(0, len(proof), 33):
        side, sibling = proof[at], proof[at + 1 : at + 33]
        if side == 1:
            h = _node(h, sibling)
        elif side == 0:
            h = _node(sibling, h)
        else:
            raise ReceiptError("a proof step starts with a byte other than 0 (left) or 1 (right)")
    return h


def _keys_by_kid(jwks: dict[str, Any] | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = jwks.get("keys", []) if isinstance(jwks, dict) else jwks
    return {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}


def _parts(token: str) -> list[str]:
    parts = token.strip().split(".")
    if len(parts) not in (3, 4):
        raise ReceiptError(
            "a receipt has three dot-separated parts (header.payload.signature) or, signed in a batch, four "
            "(header.payload.proof.signature)"
        )
    return parts


def _header(part: str) -> Any:
    raw = b64url_decode(part, "the header")  # outside the try: its own ReceiptError (a ValueError) says why
    try:
        return json.loads(raw)
    except ValueError:
        raise ReceiptError("the header is not JSON") from None


def receipt_kid(token: str) -> str:
    """The key id a receipt names (unverified)."""
    header = _header(_parts(token)[0])
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str):
        raise ReceiptError("the header names no key (kid)")
    return kid


def unverified_claims(token: str) -> dict[str, Any]:
    raw = b64url_decode(_parts(token)[1], "the payload")
    try:
        claims = json.loads(raw)
    except ValueError:
        raise ReceiptError("the payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ReceiptError("the payload is not a JSON object")
    return claims


def verify(token: str, jwks: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """The receipt's claims if ``token`` is signed by a key in ``jwks``; raises ReceiptError otherwise."""
    token = token.strip()
    parts = _parts(token)
    header = _header(parts[0])
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise ReceiptError("the header must say alg EdDSA")
    batched = len(parts) == 4
    if (header.get("typ") == BATCH_TYP) != batched:
        raise ReceiptError(
            f"a receipt with a proof has typ {BATCH_TYP} and one without does not (a batch's signature "
            "covers a Merkle root, never claims)"
        )
    kid = header.get("kid")
    jwk = _keys_by_kid(jwks).get(kid) if isinstance(kid, str) else None
    if jwk is None:
        raise ReceiptError(f"signed by an unknown key (kid {kid!r}); fetch the current {JWKS_PATH}")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise ReceiptError(f"key {kid} is not an Ed25519 key")
    try:
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"], f"key {kid}"))
    except ValueError as e:
        raise ReceiptError(f"key {kid} is not a usable Ed25519 key: {e}") from None
    signature = b64url_decode(parts[-1], "the signature")
    if batched:
        root = _root(b64url_decode(parts[1], "the payload"), b64url_decode(parts[2], "the proof"))
        signed = f"{parts[0]}.{b64url(root)}"
    else:
        signed = f"{parts[0]}.{parts[1]}"
    try:
        public.verify(signature, signed.encode("ascii"))
    except (InvalidSignature, ValueError):
        raise ReceiptError("the signature does not match: the receipt was altered or forged") from None
    return unverified_claims(token)


class KeyRing:
    """The signing keys in one directory (see the module docstring for the layout)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def current_kid(self) -> str | None:
        try:
            return (self.dir / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _write_key(self, key: SigningKey) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(self.dir / f"{key.kid}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        (self.dir / f"{key.kid}.jwk").write_text(json.dumps(key.jwk, sort_keys=True))

    def _load(self, kid: str) -> SigningKey:
        path = self.dir / f"{kid}.key"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise ReceiptError(f"{path} is missing: the key named in {self.dir / 'current'}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ReceiptError(f"{path} is not an Ed25519 private key")
        return SigningKey(kid, private, public_jwk(private.public_key()))

    def _point_current(self, kid: str, replace: bool) -> bool:
        tmp = self.dir / f".current.{os.getpid()}.{time.monotonic_ns()}"
        tmp.write_text(kid + "\n")
        try:
            if replace:
                os.replace(tmp, self.dir / "current")
                return True
            try:
                os.link(tmp, self.dir / "current")  # fails if another process got there first
                return True
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def load_or_create(self) -> SigningKey:
        kid = self.current_kid()
        if kid is not None:
            return self._load(kid)
        key = SigningKey.generate()
        self._write_key(key)
        if self._point_current(key.kid, replace=False):
            return key
        (self.dir / f"{key.kid}.key").unlink()  # lost the race: use the winner's key
        (self.dir / f"{key.kid}.jwk").unlink()
        return self._load(self.current_kid() or "")

    def rotate(self) -> SigningKey:
        old = self.current_kid()
        key = SigningKey.generate()
        self._write_key(key)
        self._point_current(key.kid, replace=True)
        if old is not None and old != key.kid:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{old}.key").unlink()  # its public half stays in <old>.jwk
        return key

    def public_keys(self) -> list[dict[str, str]]:
        keys = []
        for path in sorted(self.dir.glob("*.jwk"), key=lambda p: p.stat().st_mtime):
            try:
                jwk = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                keys.append(jwk)
        return keys


def jwk_set(*groups: list[dict[str, str]] | tuple[dict[str, str], ...]) -> dict[str, list[dict[str, str]]]:
    seen: dict[str, dict[str, str]] = {}
    for group in groups:
        for k in group:
            seen.setdefault(k["kid"], k)
    return {"keys": list(seen.values())}


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_time(at: float) -> str:
    ms = int(at * 1000)
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"  # the formatted second is shared by its requests


class ReceiptHook:
    """The gateway hook that signs a receipt for every routed response (REST header, gRPC metadata).

    With ``batch`` on, the responses that reach ``after`` in one event-loop iteration share one signature
    (v2, see the module docstring): the first schedules the signing at the end of the iteration
    (``call_soon``, no timer), so a response waits for the rest of its iteration and one signature; at low
    load a batch is one response, signed as v1.

    An inbound with ``receipt_window`` set (a gRPC unary call: grpc.aio hands the loop one call per
    wake-up, so concurrent calls' responses never share an iteration) waits longer when the previous such
    response came less than ``window_s`` before it (another is then likely within the window): up to
    ``window_s`` after the first response of the batch, or until ``WINDOW_ENOUGH`` have gathered, or until
    a response without the flag ends an iteration, whichever comes first. Calls further apart than the
    window (low load) are signed at the end of their iteration, as without it."""

    def __init__(
        self,
        key: SigningKey,
        zones: dict[str, str],
        issuer: str = "regiongate",
        batch: bool = True,
        window_s: float = 0.0,
    ) -> None:
        self.key = key  # swapped in place when the key ring rotates
        self.zones = zones
        self.issuer = issuer
        self.batch = batch
        self.window_s = window_s
        self.signatures = 0  # how many the hook made, and for how many receipts (receipts / signature)
        self.receipts = 0
        self._pending: list[tuple[bytes, Routed, asyncio.Future[None]]] = []
        self._due: asyncio.Handle | None = None  # the pending batch's flush: end of iteration, or its window
        self._windowed = False  # _due is the window's timer (a later response may bring it forward)
        self._last_windowed = float("-inf")  # loop time of the last response that could have waited

    async def before(self, inbound: Inbound) -> None:
        return None

    def _claims(self, inbound: Inbound, region: str, route: str) -> dict[str, Any]:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "rid": inbound.request_id,
            "team": inbound.principal.team,
            "key": inbound.principal.key_id,
            "model": inbound.model,
            "endpoint": str(inbound.endpoint),
            "region": region,
            "zone": self.zones.get(region),
            "route": route,
            "tier": inbound.tier.value,
            "iat": int(now),
            "time": iso_time(now),
        }
        if inbound.client_request_id is not None:
            claims["client_rid"] = inbound.client_request_id  # the client's own id, never as "rid"
        return claims

    def after(self, inbound: Inbound, routed: Routed) -> None:
        if routed.chunks is not None:
            routed.closing.append(self.continued)
        raw = orjson.dumps(self._claims(inbound, routed.region, routed.route))
        if not self.batch:
            routed.headers.append((HEADER, _sign_one(self.key, raw)))
            self.signatures += 1
            self.receipts += 1
            return
        loop = asyncio.get_running_loop()
        routed.ready = fut = loop.create_future()
        self._pending.append((raw, routed, fut))
        if len(self._pending) >= MAX_BATCH:
            self._flush()
        elif self._wait(inbound, loop.time()) and len(self._pending) < WINDOW_ENOUGH:
            if self._due is None:
                self._due, self._windowed = loop.call_later(self.window_s, self._flush), True
        elif self._due is None or self._windowed:  # sign at the end of this iteration
            if self._due is not None:
                self._due.cancel()
            self._due, self._windowed = loop.call_soon(self._flush), False

    def _wait(self, inbound: Inbound, now: float) -> bool:
        """Whether this response's receipt waits for the window: the last one that could was recent."""
        if not inbound.receipt_window or self.window_s <= 0:
            return False
        recent = now - self._last_windowed < self.window_s
        self._last_windowed = now
        return recent

    def _flush(self) -> None:
        if self._due is not None:
            self._due.cancel()  # this call, or the one made redundant by MAX_BATCH
            self._due = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            tokens = sign_batch(self.key, [raw for raw, _, _ in batch])
        except Exception as e:  # never expected; each waiting response fails rather than hangs
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.signatures += 1
        self.receipts += len(batch)
        for (_, routed, fut), token in zip(batch, tokens, strict=True):
            routed.headers.append((HEADER, token))
            if not fut.done():  # its request may have been cancelled meanwhile
                fut.set_result(None)

    def continued(self, inbound: Inbound, routed: Routed) -> tuple[str, str]:
        """The receipt of a stream that moved, naming its hops (sent as it ends)."""
        claims = self._claims(inbound, routed.region, routed.route)
        claims["hops"] = [
            {"region": h.region, "zone": self.zones.get(h.region), "backend": h.backend, "reason": h.reason}
            for h in routed.hops
        ]
        return HEADER, sign(self.key, claims)

    def object_receipt(self, inbound: Inbound, region: str, route: str, object_id: str, stored: str) -> str:
        """The receipt of a stored object (deferred completion, stored response): where the request was
        processed (``region``) and where its result is at rest (``stored``, with that region's zone)."""
        claims = self._claims(inbound, region, route)
        claims.update(object=object_id, stored=stored, stored_zone=self.zones.get(stored))
        return sign(self.key, claims)

    def settled(self, inbound: Inbound, record: UsageRecord) -> None:
        return None
