"""Structured logs: one JSON object a line. Prompts, completions and keys are never passed to a logger,
and one redaction filter on the one handler catches what a library logs on its own (hpack's debug log
prints every decoded header, ``authorization`` included; grpc and uvicorn log peers and requests).

A handler's filter sees every record the handler writes, whichever logger made it (logger filters do not
apply to records propagated from child loggers), so ``Redactor`` sits on the root handler. hpack's own
debug log is kept at info: it dumps raw header blocks, where a key may be Huffman-coded. The filter removes:

- the values of configured secrets (team keys from env vars, upstream ``api_key``\\s, the admin key),
  registered with ``secret()`` at start-up, wherever they appear;
- anything shaped like a credential: a ``Bearer``/``Basic`` token, a regiongate key (``rg-...``), and the
  value after ``authorization``, ``x-api-key``, ``api_key``, ``admin_key``, ``password`` or ``secret``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping

import orjson

from regiongate.config import Config, HttpBackend

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
REDACTED = "[redacted]"
# Applied in this order: tokens after an auth scheme, regiongate keys, URL passwords, then the value after a
# credential-ish name (unless it is an auth scheme, whose token the first rule already removed).
_SHAPES = (
    (re.compile(r"(?i)(bearer|basic)(\s+)[A-Za-z0-9\-._~+/=]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"\brg-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"(://[^:/\s@]*:)[^@\s/]+(?=@)"), rf"\1{REDACTED}"),
    (
        re.compile(
            r"(?i)((?:authorization|x-api-key|api[_-]?key|admin[_-]?key|password|secret)"
            r"""['"]?\s*[:=,]\s*+(?-i:b)?+['"]?+)(?!\[redacted\]|bearer\b|basic\b)[^\s'",)}\]]+"""
        ),
        rf"\1{REDACTED}",
    ),
)


class Redactor(logging.Filter):
    """Rewrites each record so that no secret reaches the output (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def secret(self, value: str | None) -> None:
        if value and len(value) >= 6:  # shorter strings would redact ordinary words
            self._secrets.add(value)

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        for k, v in vars(record).items():
            if k not in _STD and isinstance(v, str):
                setattr(record, k, self.redact(v))
            elif k not in _STD and not isinstance(v, (int, float, bool, type(None))):
                setattr(record, k, self.redact(str(v)))
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


REDACTOR = Redactor()  # the process's one filter; secrets are added to it as the config is read


def register_secrets(cfg: Config, env: Mapping[str, str]) -> None:
    """Every secret the config names, by value, so that it is redacted wherever it would appear."""
    for t in cfg.teams:
        for k in t.keys:
            if k.env:
                REDACTOR.secret(env.get(k.env))
    for d in cfg.deployments:
        for b in d.backends:
            if isinstance(b, HttpBackend):
                REDACTOR.secret(b.api_key)
                if b.api_key_env:
                    REDACTOR.secret(env.get(b.api_key_env))
    REDACTOR.secret(env.get(cfg.control.admin_key_env))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD:
                obj[k] = v
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hpack's debug log dumps each raw header block; a Huffman-coded key there is no text a filter can
    # recognise, yet anyone can decode it. Its decoded headers are nothing our own logs lack.
    logging.getLogger("hpack").setLevel(max(logging.INFO, root.level))
    logging.captureWarnings(True)  # warnings go through the handler (and the filter) too
