"""Short content hashes of JSON-able settings: run ids (study) and cached-net names (train) alike."""
from __future__ import annotations

import hashlib
import json


def short_hash(obj, n: int) -> str:
    """The first `n` hex digits of the sha256 of `obj` as sorted-key JSON (equal settings, equal hash)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]
