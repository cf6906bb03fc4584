"""Reading the host a client dialled from the first bytes of its connection, sans-IO (bytes in, names out).

Two readers, one per transport the gRPC front accepts:

- ``H2Authorities`` follows the client half of a cleartext HTTP/2 (h2c) connection frame by frame and
  HPACK-decodes every header block, returning each request's ``:authority``. It must see every block in
  order because HPACK's dynamic table is connection state; other frames are skipped by their length.
  ``AuthorityDecoder`` is that HPACK decoder, reduced to what names the host.
- ``ClientHelloSni`` collects the TLS ClientHello (possibly split over several records) and returns the
  ``server_name`` extension, which is the host the client verifies the certificate against.

Both raise ``SniffError`` when the peer does not speak the protocol, so the front can drop the connection.
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
MAX_HEADER_BLOCK = (
    256 * 1024
)  # far above grpc's 16 KiB metadata limit; bounds what one peer can make us buffer
MAX_CLIENT_HELLO = 64 * 1024
MAX_TABLE = 65536  # the largest dynamic table a client may ask for; the server validates the real limit
_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)
_HOST_NAMES = (b":authority", b"host")
_VARINT_BYTES = 5  # continuation octets of an HPACK integer, as hpack allows (enough for a uint32)


class SniffError(Exception):
    """The peer's bytes are not the protocol this listener speaks (or are malformed)."""


class H2Authorities:
    """Feed the client->server bytes of an h2c connection; get the ``:authority`` of each request."""

    __slots__ = ("_block", "_buf", "_decoder", "_in_block", "_preface", "_skip")

    def __init__(self) -> None:
        self._decoder = AuthorityDecoder()
        self._preface = True
        self._buf = b""
        self._skip = 0  # payload bytes of a non-header frame still to pass over
        self._block = bytearray()
        self._in_block = False  # inside HEADERS ... CONTINUATION without END_HEADERS yet

    @property
    def started(self) -> bool:
        """The connection preface has arrived."""
        return not self._preface

    def feed(self, data: bytes) -> list[str]:
        """Authorities (lower-cased, as sent) of the header blocks completed by ``data``, in order."""
        out: list[str] = []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return out
            data = data[self._skip :]
            self._skip = 0
        buf = self._buf + data if self._buf else data
        pos = 0
        if self._preface:
            if len(buf) < len(H2_PREFACE):
                if not H2_PREFACE.startswith(buf):
                    raise SniffError("not an HTTP/2 connection preface")
                self._buf = buf
                return out
            if not buf.startswith(H2_PREFACE):
                raise SniffError("not an HTTP/2 connection preface")
            self._preface = False
            pos = len(H2_PREFACE)
        end = len(buf)
        while end - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            ftype, flags = buf[pos + 3], buf[pos + 4]
            header_frame = ftype in (_HEADERS, _CONTINUATION)
            if self._in_block and ftype != _CONTINUATION:
                raise SniffError("header block interrupted by another frame")
            if not header_frame:
                pos += 9
                if end - pos < length:
                    self._skip = length - (end - pos)
                    pos = end
                    break
                pos += length
                continue
            if length > MAX_HEADER_BLOCK:
                raise SniffError("header frame too large")  # refused before it is buffered
            if end - pos < 9 + length:
                break  # wait for the whole header frame
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if ftype == _HEADERS:
                payload = _strip_headers_frame(payload, flags)
            elif not self._in_block:
                raise SniffError("CONTINUATION without HEADERS")
            self._block += payload
            if len(self._block) > MAX_HEADER_BLOCK:
                raise SniffError("header block too large")
            if flags & _END_HEADERS:
                self._in_block = False
                authority = self._authority(bytes(self._block))
                self._block.clear()
                if authority is not None:
                    out.append(authority)
            else:
                self._in_block = True
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _authority(self, block: bytes) -> str | None:
        value = self._decoder.authority(block)
        return value.decode("latin-1") if value is not None else None  # trailers carry neither


class AuthorityDecoder:
    """HPACK (RFC 7541) for one direction of one connection, reduced to what names the host.

    The dynamic table is kept exactly (it is connection state: a later request names its authority by an
    index into it), so every field that enters it is decoded whole: its decoded length is the entry's size.
    A literal that does not enter it is decoded only when its name is ``:authority`` or ``host``; any other
    value is skipped by its length. That is what makes it several times cheaper per request than
    ``hpack.Decoder``, which builds, logs and size-checks every header of every block (50-70 µs per gRPC
    call on the test machine, the largest share of the front's own CPU). The answers are the same:
    tests/grpc/test_front.py compares them with hpack's on random blocks. A malformed value that is
    skipped reaches grpc core, which ends the connection on it (HPACK errors are connection errors).
    """

    __slots__ = ("_entries", "_max", "_size")

    def __init__(self) -> None:
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is _entries[0]
        self._size = 0
        self._max = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value, until the encoder says otherwise

    def authority(self, block: bytes) -> bytes | None:
        """The block's first ``:authority``, else its last ``host``, else None; SniffError if malformed."""
        pos, end = 0, len(block)
        authority: bytes | None = None
        host: bytes | None = None
        started = False  # a field was seen: a table size update may only come before the first one
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field, most often one octet naming a static entry
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, 0x7F)
                else:
                    pos += 1
                name, value = _STATIC[index - 1] if 0 < index <= _STATIC_LEN else self._get(index)
            elif first & 0x40 or not first & 0x20:  # literal, entering the table (0x40) or not
                indexing = bool(first & 0x40)
                index, pos = _integer(block, pos, 0x3F if indexing else 0x0F)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _string(block, pos, True)
                value, pos = _string(block, pos, indexing or name in _HOST_NAMES)
                if indexing:
                    self._add(name, value)
            else:  # dynamic table size update
                if started:
                    raise SniffError("bad HPACK header block: table size update after a field")
                size, pos = _integer(block, pos, 0x1F)
                if size > MAX_TABLE:
                    raise SniffError("bad HPACK header block: table size above the maximum")
                self._max = size
                self._evict()
                continue
            started = True
            if name == b":authority":
                if authority is None:
                    authority = value
            elif name == b"host":
                host = value
        return authority if authority is not None else host

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        i = index - len(_STATIC) - 1
        if 0 <= i < len(self._entries):
            return self._entries[i]
        raise SniffError("bad HPACK header block: index out of range")

    def _add(self, name: bytes, value: bytes) -> None:
        size = 32 + len(name) + len(value)
        if size > self._max:  # RFC 7541 4.4: an entry larger than the table empties it and is not added
            self._entries.clear()
            self._size = 0
            return
        self._entries.appendleft((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max:
            name, value = self._entries.pop()
            self._size -= 32 + len(name) + len(value)


def _integer(block: bytes, pos: int, mask: int) -> tuple[int, int]:
    """An HPACK integer with a ``mask``-bit prefix at ``pos``: (value, position after it)."""
    n = block[pos] & mask
    pos += 1
    if n < mask:
        return n, pos
    shift = 0
    for _ in range(_VARINT_BYTES):
        if pos >= len(block):
            raise SniffError("bad HPACK header block: truncated")
        b = block[pos]
        pos += 1
        n += (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
    raise SniffError("bad HPACK header block: integer too long")


def _string(block: bytes, pos: int, decode: bool) -> tuple[bytes, int]:
    """An HPACK string literal at ``pos``: (its octets, or b"" when not ``decode``; position after it)."""
    if pos >= len(block):
        raise SniffError("bad HPACK header block: truncated")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 0x7F)
    stop = pos + length
    if stop > len(block):
        raise SniffError("bad HPACK header block: truncated")
    if not decode:
        return b"", stop
    raw = block[pos:stop]
    if not huffman:
        return raw, stop
    try:
        return decode_huffman(raw), stop
    except HPACKError as e:
        raise SniffError(f"bad HPACK header block: {type(e).__name__}") from None


def _strip_headers_frame(payload: bytes, flags: int) -> bytes:
    start, pad = 0, 0
    if flags & _PADDED:
        if not payload:
            raise SniffError("padded HEADERS frame without pad length")
        pad, start = payload[0], 1
    if flags & _PRIORITY:
        start += 5
    if start + pad > len(payload):
        raise SniffError("HEADERS frame padding exceeds its length")
    return payload[start : len(payload) - pad]


class ClientHelloSni:
    """Feed the first bytes of a TLS connection; ``feed`` returns ``(done, server_name)``."""

    __slots__ = ("_buf", "_hs")

    def __init__(self) -> None:
        self._buf = b""  # raw record bytes not yet parsed
        self._hs = bytearray()  # handshake-layer bytes gathered from records

    def feed(self, data: bytes) -> tuple[bool, str | None]:
        buf = self._buf + data
        pos = 0
        while len(buf) - pos >= 5:
            if buf[pos] != 0x16:  # handshake record
                raise SniffError("not a TLS handshake")
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if len(buf) - pos < 5 + length:
                break
            self._hs += buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if len(self._hs) >= 4:
                if self._hs[0] != 0x01:
                    raise SniffError("first handshake message is not a ClientHello")
                need = 4 + int.from_bytes(self._hs[1:4], "big")
                if need > MAX_CLIENT_HELLO:
                    raise SniffError("ClientHello too large")
                if len(self._hs) >= need:
                    return True, parse_client_hello_sni(bytes(self._hs[4:need]))
        if pos == 0 and buf and buf[0] != 0x16:
            raise SniffError("not a TLS handshake")
        self._buf = buf[pos:]
        if len(self._buf) + len(self._hs) > MAX_CLIENT_HELLO + 5:
            raise SniffError("ClientHello too large")
        return False, None


def parse_client_hello_sni(body: bytes) -> str | None:
    """The host_name of the server_name extension in a ClientHello body, or None when absent."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # session id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
        pos += 1 + body[pos]  # compression methods
        if pos >= len(body):
            return None  # no extensions
        ext_end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= ext_end:
            etype = int.from_bytes(body[pos : pos + 2], "big")
            elen = int.from_bytes(body[pos + 2 : pos + 4], "big")
            pos += 4
            if etype == 0:  # server_name: list length, then (type, length, name) entries
                end = pos + elen
                p = pos + 2
                while p + 3 <= end:
                    ntype, nlen = body[p], int.from_bytes(body[p + 1 : p + 3], "big")
                    if ntype == 0:
                        return body[p + 3 : p + 3 + nlen].decode("ascii").lower()
                    p += 3 + nlen
                return None
            pos += elen
    except (IndexError, UnicodeDecodeError):
        raise SniffError("malformed ClientHello") from None
    return None
