"""Stable fingerprints of configuration values.

A cache made under one configuration must not be reused under another. Each cache file stores the
fingerprint of the configuration values that determine its content, and readers compare it with the
fingerprint they expect.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(value: Any) -> str:
    """Return a short, stable hex digest of a JSON-serialisable value (key order does not matter)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
