"""Names derived from a catalog URI, in one place: the Prefect asset key of an artifact.

The catalog names artifacts by URI (``dataset://demo/math/train``,
``routing-eval://demo/main``, ``generated://math?rows=400&seed=0``). Prefect asset
keys must start with a lowercase ``[a-z0-9]+://`` scheme, hold none of
``RESTRICTED`` and be at most 512 characters (``prefect.types.names``; the core
never imports Prefect, ``tests/test_openlineage.py`` checks the rules agree). So:

* a URI that is a valid key is its own key;
* any other becomes ``brainstacks://<scheme>/<rest>`` with each run of other
  characters replaced by ``/`` (``brainstacks://generated/math/rows/400/seed/0``),
  cut to 512 characters with a hash of the URI when longer.

The OpenLineage dataset name is the URI itself (``lineage.openlineage``).
"""

from __future__ import annotations

import re

from brainstacks_core.lineage.versioning import content_hash

MAX_KEY = 512
RESTRICTED = "\n\r\t\0 #?&%\"'<>[]{}|\\^`"
_SCHEME = re.compile(r"^[a-z0-9]+://")
_OTHER = re.compile(r"[^A-Za-z0-9._/-]+")


def asset_key(uri: str) -> str:
    """The Prefect asset key of catalog URI ``uri`` (see the module docstring); deterministic."""
    if _SCHEME.match(uri) and not any(c in uri for c in RESTRICTED) and len(uri) <= MAX_KEY:
        return uri
    key = "brainstacks://" + _OTHER.sub("/", uri.replace("://", "/", 1)).strip("/")
    if len(key) > MAX_KEY:
        key = key[: MAX_KEY - 17] + "/" + content_hash(uri, length=16)
    return key
