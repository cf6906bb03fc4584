"""The one rule tying the TLS server name to the host a request names.

A client that presents ``us-east-1.api.x.ai`` in SNI (and checks the certificate against it) must not route by
another ``Host`` / ``:authority`` on the same connection: the endpoint decides where data is processed, so
the two have to agree or the request is refused (421 Misdirected Request, RFC 9110 15.5.20).
"""

from __future__ import annotations


def host_only(authority: str) -> str:
    """``Host`` / ``:authority`` without port, lower-case, without a trailing dot."""
    a = authority.strip().lower()
    if a.startswith("["):  # [v6]:port
        end = a.find("]")
        return a[1:end] if end > 0 else a
    if a.count(":") == 1:
        a = a.rsplit(":", 1)[0]
    return a.rstrip(".")


def misdirected(sni: str | None, authority: str | None) -> bool:
    """True when the connection named a server (SNI) and the request names another host (or none).

    Without SNI (a client that dialled an IP address, or cleartext) there is nothing to compare: the request's
    host alone decides, as everywhere else."""
    if not sni:
        return False
    return host_only(authority or "") != sni.rstrip(".").lower()


def refusal_message(sni: str, authority: str | None) -> str:
    return (
        f"This TLS connection was opened for '{sni}' but the request is for '{authority or ''}'; "
        "regiongate routes by the name the client dialled, so both must be the same. "
        "Open a connection to the host you address."
    )
