"""HTTP/2 connections that stay usable after a GOAWAY.

h2 treats a GOAWAY, sent or received, as the end of the connection: its state machine goes to CLOSED and
every later frame is an error, even the DATA, PING and WINDOW_UPDATE frames of the streams the GOAWAY let
finish (and grpc core sends a PING right behind its GOAWAY). HTTP/2 says the opposite (RFC 9113 6.8:
streams up to the last stream id run to completion), and draining depends on it. So the state machine is put
back to open as soon as a GOAWAY has been handled, inside ``receive_data`` (before the next frame of the
same read), and the streams above the last id are refused by our own code.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection


def h2_config(client_side: bool) -> H2Configuration:
    """Headers stay bytes; what a peer sends us is validated, what we send is not validated again: it is
    either our own (the REST app's, minus hop-by-hop headers) or a peer's that h2 already validated on
    the way in, and the second validation was a measurable share of each relayed frame's cost."""
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class DrainableH2Connection(H2Connection):
    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        # HPACK without Huffman coding: valid for every peer, a few bytes larger per header block, and
        # measured as the largest single cost of a relayed gRPC call (~200 µs of pure-Python Huffman per call).
        encode = self.encoder.encode
        self.encoder.encode = lambda headers, huffman=True: encode(headers, huffman=False)  # type: ignore[method-assign]

    def _reopen(self) -> None:
        self.state_machine.state = (
            ConnectionState.CLIENT_OPEN if self.config.client_side else ConnectionState.SERVER_OPEN
        )

    def _receive_goaway_frame(self, frame: Any) -> Any:
        out = super()._receive_goaway_frame(frame)
        self._reopen()
        return out

    def close_connection(
        self, error_code: int = 0, additional_data: bytes | None = None, last_stream_id: int | None = None
    ) -> None:
        super().close_connection(error_code, additional_data, last_stream_id)
        self._reopen()
