"""The ``[control]`` config section and how it resolves against the environment (data dir, store URL,
admin key). Imported by ``regiongate.config``; nothing here opens a file or a connection."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

DATA_DIR_ENV = "REGIONGATE_DATA_DIR"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControlConfig(_Model):
    """Teams, keys, usage and receipts. The default is an SQLite file in the data directory."""

    # "" = sqlite file <data_dir>/control.db; "none" turns the control plane off (config keys only);
    # "sqlite:///relative.db", "sqlite:////absolute.db" or "postgresql://user@host/db?schema=name".
    store: str = ""
    store_env: str = "REGIONGATE_STORE"  # when set, this env var overrides 'store' (keeps passwords out)
    data_dir: str = ""  # default: $REGIONGATE_DATA_DIR, $XDG_DATA_HOME/regiongate, ~/.local/share/regiongate
    admin_key_env: str = "REGIONGATE_ADMIN_KEY"  # the admin API is off unless this env var or the hash is set
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    refresh_s: float = Field(2.0, gt=0, le=3600)  # keys and grants are re-read this often
    usage_flush_s: float = Field(1.0, gt=0, le=300)  # usage records are written at least this often
    usage_batch: int = Field(500, ge=1, le=100_000)
    # Usage is kept as exact per-minute aggregates; this share of successful requests is also kept as a
    # per-request row (failed ones and continued streams always are): 1 = every request, 0 = none.
    usage_rows: float = Field(0.01, ge=0, le=1)
    receipts: bool = True
    receipt_batch: bool = True  # the receipts of one loop iteration share a signature (v2 receipts)
    # A gRPC unary call's receipt may wait this long for others to share its signature (grpc.aio hands the
    # loop one call per wake-up, so they rarely share an iteration); 0 = only its own iteration's.
    receipt_window_us: int = Field(2000, ge=0, le=100_000)
    receipt_key_dir: str = ""  # default: <data_dir>/receipt-keys
    console: bool = True

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v and v != "none" and not v.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ValueError("use '', 'none', 'sqlite:///path.db' or 'postgresql://...'")
        return v


@dataclass(frozen=True)
class Resolved:
    store_url: str | None
    data_dir: Path
    receipt_key_dir: Path
    admin_key_hash: str | None


def default_data_dir(env: dict[str, str]) -> Path:
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV])
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "regiongate"


def resolve(c: ControlConfig, env: dict[str, str]) -> Resolved:
    data = Path(c.data_dir) if c.data_dir else default_data_dir(env)
    store = env.get(c.store_env) or c.store
    if store == "none":
        url = None
    elif store:
        url = store
    else:
        url = "sqlite:///" + str(data / "control.db")
    admin = c.admin_key_sha256
    if admin is None and env.get(c.admin_key_env):
        admin = hashlib.sha256(env[c.admin_key_env].encode()).hexdigest()
    keys = Path(c.receipt_key_dir) if c.receipt_key_dir else data / "receipt-keys"
    return Resolved(url, data, keys, admin)
