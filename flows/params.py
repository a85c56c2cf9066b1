"""Typed flow parameters, so the Prefect UI renders a form with choices, toggles and help text.

* ``ProfilePath``: a choice among ``configs/*.yaml`` (read from the folder when this
  module is imported, i.e. at deploy time); any other path still validates (tests,
  a profile of your own from the CLI), the choice list is what the form offers.
* ``DomainName``: a choice among every domain of those profiles (the flow checks it
  belongs to the chosen profile and names the profile's domains if not).
  ``DomainOrAll`` adds the choice ``all`` (the default of an optional domain) and
  ``DomainNames`` is a multiple choice. Their schema is written out
  (``WithJsonSchema``), so the form gets a plain ``enum``: a ``DomainName | None``
  would be an ``anyOf`` with ``null``, which the form shows as a str/None toggle
  ("Property is type None") hiding the choices. Python callers may still pass ``None``.
* ``RunName``, ``ArtifactRoot``: free text with a description.
* Booleans stay ``bool`` (a toggle in the form); ``None`` for "the profile's setting".

The descriptions the form shows come from each flow's Google-style ``Args:``
docstring (Prefect parses it; a description on the annotation is not read), so each
flow's docstring says what its parameters mean. ``brainstacks config schema``
describes the profile file itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, WithJsonSchema

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def profile_choices(folder: Path = CONFIGS) -> list[str]:
    """``configs/<name>.yaml`` for every profile in the folder (sorted), as the worker resolves them."""
    return [f"configs/{p.name}" for p in sorted(folder.glob("*.yaml"))]


def domain_choices(folder: Path = CONFIGS) -> list[str]:
    """Every domain named by a profile in the folder, first-seen order (demo's curriculum first)."""
    out: list[str] = []
    for p in sorted(folder.glob("*.yaml"), key=lambda p: (p.name != "demo.yaml", p.name)):
        try:
            domains = (yaml.safe_load(p.read_text()) or {}).get("data", {}).get("domains", [])
        except (OSError, yaml.YAMLError):
            continue
        out.extend(d for d in domains if d not in out)
    return out


PROFILES = profile_choices()
DOMAINS = domain_choices()

ProfilePath = Annotated[str, Field(json_schema_extra={"enum": PROFILES})]
ALL_DOMAINS = "all"
"""The ``DomainOrAll`` choice meaning every domain of the profile."""
DomainName = Annotated[str, Field(json_schema_extra={"enum": DOMAINS})]
DomainOrAll = Annotated[str | None, WithJsonSchema({"type": "string", "enum": [ALL_DOMAINS, *DOMAINS]})]
DomainNames = Annotated[list[str] | None, WithJsonSchema({"type": "array", "uniqueItems": True,
                                                         "items": {"type": "string", "enum": DOMAINS}})]
RunName = Annotated[str, Field(min_length=1)]
