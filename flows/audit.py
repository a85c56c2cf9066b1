"""``brainstacks audit``: answer lineage questions from the DuckDB catalog (no Prefect run).

* ``--artifact X``: X (a URI, a catalog version, or a dataset version as ``prepare``
  prints it, which stands for all its splits) and everything upstream of it.
* ``--record R``: every dataset holding record R, with the source file, the row it
  came from and the domain it moved from, then everything built from those datasets.
* ``--list``: every artifact.

Every line shows when the version was recorded and by which Prefect flow/task run;
``--current`` hides versions superseded by a newer one of the same URI.
"""

from __future__ import annotations

import argparse

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile

SPLITS = ("train", "val", "test", "router")
LEGEND_UP = ("depth: 0 = the artifact asked about, 1 = its direct inputs, 2 = inputs of those inputs, ...")
LEGEND_DOWN = ("depth: 0 = a dataset holding the record, 1 = built directly from it (e.g. a stack), "
               "2 = built from that, ...")


def _when(a: dict) -> str:
    at = a.get("created_at")
    run = a.get("flow_run_id")
    task = a.get("task_run_id")
    when = f"created {at:%Y-%m-%d %H:%M:%S}" if hasattr(at, "strftime") else f"created {at}"
    return when + (f"  flow run {run}" if run else "") + (f"  task run {task}" if task else "")


def _fmt(a: dict, depth: bool = True) -> str:
    d = f"{a.get('depth', ''):>3}  " if depth else ""
    return f"{d}{a['kind']:<9} {a['uri']}  @ {a['version']}  code {a['code_version']}  {_when(a)}"


def _current(cat: Catalog, arts: list[dict], on: bool) -> list[dict]:
    if not on:
        return arts
    latest: dict[str, str | None] = {}
    for a in arts:
        if a["uri"] not in latest:
            art = cat.latest(a["uri"])
            latest[a["uri"]] = art["version"] if art else None
    return [a for a in arts if latest[a["uri"]] == a["version"]]


def _resolve(cat: Catalog, ref: str) -> list[dict]:
    """The artifacts ``ref`` names: a version, a URI (its latest version), or a dataset version (all splits)."""
    art = cat.get(ref)
    if art is not None:
        return [art]
    return [a for a in (cat.get(f"{ref}-{s}") for s in SPLITS) if a is not None]


def _near(cat: Catalog, ref: str, limit: int = 20) -> list[str]:
    """What the user probably meant: the rounds of a stack URI given without one, else URIs that start alike.

    ``stack://demo/main/math`` has no artifact of its own (a domain's stacks are its rounds); the
    answer lists ``stack://demo/main/math/r1 ...`` with their versions, newest version of each.
    """
    arts = cat.list_artifacts()
    prefix = ref.rstrip("/") + "/"
    under = _latest_per_uri([a for a in arts if a["uri"].startswith(prefix)])
    if under:
        head = (f"{ref} is a domain of a run; its rounds are:" if ref.startswith("stack://")
                else f"artifacts under {ref}:")
        return [head] + [f"  {a['uri']}  {a['version']}" for a in under[:limit]]
    stem = ref.rsplit("/", 1)[0] + "/" if "/" in ref.split("://", 1)[-1] else ref
    alike = _latest_per_uri([a for a in arts if a["uri"].startswith(stem)])
    return ([f"did you mean one of these ({stem}...)?"] + [f"  {a['uri']}" for a in alike[:limit]]) if alike else []


def _latest_per_uri(arts: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for a in reversed(arts):  # list_artifacts is oldest first: keep each URI's newest version
        seen.setdefault(a["uri"], a)
    return sorted(seen.values(), key=lambda a: a["uri"])


def _record(cat: Catalog, record: str, current: bool) -> list[str]:
    found = _current(cat, cat.artifacts_containing(record), current)
    lines = [LEGEND_DOWN]
    for a in found:
        lines.append(_fmt(a))
        if a.get("depth") != 0:
            continue
        src = a.get("source_uri_of_record")
        path = next((u.get("path") for u in cat.upstream(a["version"]) if u["uri"] == src and u.get("path")), None)
        domain = a["uri"].rsplit("/", 2)[-2] if a["uri"].startswith("dataset://") else None
        lines.append(f"       record {record}: split {a.get('split')}, from {src} {a.get('source_row_key')}"
                     + (f" (file {path})" if path else ""))
        origin = a.get("origin_domain")
        if origin and domain and origin != domain:
            lines.append(f"       moved from domain {origin!r} to {domain!r} by keyword decontamination")
    return lines


def cli_audit(args: argparse.Namespace) -> int:
    """``--artifact X`` prints everything upstream of X, ``--record R`` every artifact holding R,
    ``--list`` every artifact; ``--current`` hides superseded versions."""
    profile = load_profile(args.config, getattr(args, "artifact_root", None))
    cat = Catalog.for_context(profile.context)
    current = bool(getattr(args, "current", False))
    if getattr(args, "list", False):
        arts = _current(cat, cat.list_artifacts(), current)
        print("\n".join(_fmt(a, depth=False) for a in arts) or f"catalog {cat.location} is empty")
        return 0
    if getattr(args, "artifact", None):
        arts = _resolve(cat, args.artifact)
        if not arts:
            print(f"no artifact {args.artifact!r} in {cat.location}")
            hints = _near(cat, args.artifact)
            if hints:
                print(hints[0])
                print("\n".join(hints[1:]))
            return 1
        print(LEGEND_UP)
        for art in arts:
            print(_fmt({**art, "depth": 0}))
            for a in _current(cat, cat.upstream(art["version"]), current):
                print(_fmt(a))
        return 0
    lines = _record(cat, args.record, current)
    if len(lines) == 1:
        print(f"record {args.record!r} is in no artifact of {cat.location}")
        return 1
    print("\n".join(lines))
    return 0
