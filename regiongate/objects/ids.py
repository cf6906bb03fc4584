"""Object ids that name the region holding the object: ``<prefix>_<region>_<24 hex>``.

Region ids are DNS labels (no ``_``), so the region is read back without a lookup table; the global
endpoint uses it to open the right region's store, without a directory that would copy ids elsewhere.
"""

from __future__ import annotations

import os


def new_id(prefix: str, region: str) -> str:
    return f"{prefix}_{region}_{os.urandom(12).hex()}"


def region_of(object_id: str, prefix: str) -> str | None:
    """The region named in ``object_id``, or None when it is not one of our ids of that kind."""
    parts = object_id.split("_")
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or len(parts[2]) != 24:
        return None
    try:
        int(parts[2], 16)
    except ValueError:
        return None
    return parts[1]
