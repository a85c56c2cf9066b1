"""Model cards: one markdown page per frozen stack, from the run's manifest and the catalog.

A card says what a stack is and where it came from: its file and checksums, the
validation losses of its round, the dataset versions (and row counts) it trained
and was selected on with the sources of their rows and, apart from them, the
benchmarks the rows were decontaminated against, the parent stacks that were frozen under
it, the null-space basis its updates were projected away from (version, K per
module), the base model (fingerprint, source, revision), the MoE-LoRA shape, the
code version and config hash, and the Prefect run ids that trained it.

:func:`write_model_cards` writes ``<stack file stem>.model_card.md`` beside each
stack file (so the card travels with the stack outside Prefect) and returns the
markdown for the UI. Cards are deterministic given the manifest and the catalog,
so writing them again (a resumed run, a reused domain) changes nothing.
Memory: one manifest and one card (a few KB); the stack's tensors are never read.
"""

from __future__ import annotations

import json
from pathlib import Path

from brainstacks_core.files import atomic_write_text


def stack_file_metadata(path: str | Path) -> dict:
    """The safetensors header metadata of a stack file (``lineage``/``moe_config`` parsed); {} if unreadable.

    Reads only the header (``safetensors.safe_open``), never the tensors.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except (OSError, SafetensorError):
        return {}
    for key in ("lineage", "moe_config"):
        if isinstance(meta.get(key), str):
            try:
                meta[key] = json.loads(meta[key])
            except ValueError:
                pass
    return meta


def card_path(stack_file: str | Path) -> Path:
    """``<folder>/<stem>.model_card.md`` beside the stack file."""
    p = Path(stack_file)
    return p.with_name(p.stem + ".model_card.md")


def _rows(art: dict | None) -> str:
    meta = (art or {}).get("metadata") or {}
    counts, split = meta.get("counts") or {}, meta.get("split")
    return str(counts.get(split)) if split in counts else "?"


BENCHMARK_KIND = "eval_set"  # the kind the data stage records its decontamination benchmarks under


def _inputs(catalog, version: str) -> tuple[str, str]:
    """The dataset's direct inputs split in two cells: the sources its rows come from, and the benchmarks
    its rows were decontaminated against (an input of the version, never a source of a row)."""
    if catalog is None or not version:
        return "", ""
    ups = [a for a in catalog.upstream(version) if a.get("depth") == 1]
    cell = lambda arts: "<br>".join(f"`{a['uri']}` @ `{a['version']}`" for a in arts) or "-"  # noqa: E731
    return (cell([a for a in ups if a.get("kind") != BENCHMARK_KIND]),
            cell([a for a in ups if a.get("kind") == BENCHMARK_KIND]))


def model_card(profile: str, run: str, manifest: dict, domain: str, rnd: dict, catalog=None) -> str:
    """The markdown card of one frozen round.

    Args:
        profile: profile name.
        run: run name (``main``, ``no-null-space``).
        manifest: the run's manifest (``manifest.json``).
        domain: the stack's domain.
        rnd: the round's manifest record (``stack_id``, ``version``, ``file``, losses, ...).
        catalog: a ``Catalog`` (row counts, sources, base details, run ids); None: manifest and file only.
    """
    entry = manifest["domains"][domain]
    file_meta = stack_file_metadata(rnd["file"]) if rnd.get("file") else {}
    lin = file_meta.get("lineage") or {}
    get = (lambda v: catalog.get(v) if catalog is not None and v else None)  # noqa: E731
    art = get(rnd.get("version")) or {}
    uri = f"stack://{profile}/{run}/{domain}/r{rnd['round']}"
    ns = entry.get("null_space")
    base = get(manifest.get("base_fingerprint")) or {}
    base_meta = base.get("metadata") or {}
    moe = file_meta.get("moe_config") or {}
    lines = [f"# Model card: stack `{rnd['stack_id']}`", "",
             f"Frozen MoE-LoRA stack of domain **{domain}**, boosting round {rnd['round']}, run `{profile}/{run}`.", "",
             "| | |", "|---|---|",
             f"| URI | `{uri}` |", f"| version | `{rnd.get('version')}` |",
             f"| file | `{rnd.get('file')}` |", f"| file sha256 | `{rnd.get('file_sha256')}` |",
             f"| tensor sha256 | `{file_meta.get('tensor_sha256', '?')}` |",
             f"| validation loss | {rnd['loss_before']:.4f} → {rnd['loss_after']:.4f} ({rnd.get('reason', '')}) |",
             f"| training time | {float(rnd.get('seconds') or 0):.1f} s |", "",
             "## Data", "", "Rows come from the sources; the benchmarks are what the rows were decontaminated "
             "against (13-gram overlap removed), not a source of any row.", "",
             "| split | dataset version | rows | sources of the rows | decontaminated against |",
             "|---|---|---|---|---|"]
    for split, version in (("train", entry.get("train_version")), ("val", entry.get("val_version"))):
        sources, benchmarks = _inputs(catalog, version)
        lines.append(f"| {split} | `{version}` | {_rows(get(version))} | {sources} | {benchmarks} |")
    parents = lin.get("parent_stacks") or {}
    lines += ["", f"## Parent stacks ({len(parents)}: frozen before it, active while it trained)", ""]
    if parents:
        lines += ["| stack | version | URI |", "|---|---|---|"]
        lines += [f"| `{sid}` | `{v}` | `{(get(v) or {}).get('uri', '?')}` |" for sid, v in sorted(parents.items())]
    else:
        lines.append("none: the first stack of the run")
    lines += ["", "## Null-space basis", ""]
    if ns:
        k = sorted(set((ns.get("directions") or {}).values()))
        lines += [f"Updates projected out of the span of the earlier domains' stack outputs: basis `{ns['version']}`, "
                  f"{len(ns.get('directions') or {})} modules, K = {', '.join(map(str, k)) or '?'} directions per "
                  f"module, file `{ns['file']}` (tensor sha256 `{str(ns.get('tensor_sha256'))[:16]}`)."]
    else:
        first = manifest.get("domains_order", [domain])[0] == domain
        lines.append("none: " + ("the first domain has nothing to protect" if first
                                 else "the null space is off in this run"))
    lines += ["", "## Base model", "", "| | |", "|---|---|",
              f"| fingerprint | `{manifest.get('base_fingerprint')}` |",
              f"| source | {base_meta.get('source', '?')} |", f"| revision | `{base_meta.get('revision') or '-'}` |",
              f"| path | `{base.get('path', '?')}` |", "",
              "## Code, configuration and runs", "", "| | |", "|---|---|",
              f"| code version | `{art.get('code_version') or file_meta.get('code_version', '?')}` |",
              f"| run config hash | `{manifest.get('config_hash')}` |",
              f"| MoE-LoRA | rank {moe.get('rank', '?')}, {moe.get('num_experts', '?')} experts, "
              f"top-{moe.get('top_k', '?')} |",
              f"| chain key | `{entry.get('chain_key', '-')}` |",
              f"| trained by flow run | `{art.get('flow_run_id') or '-'}` |",
              f"| task run | `{art.get('task_run_id') or '-'}` |",
              f"| recorded at | {art.get('created_at', '-')} |"]
    if entry.get("reused_from"):
        lines.append(f"| reused from | `{entry['reused_from']}` (unchanged inputs: not retrained) |")
    return "\n".join(lines) + "\n"


def write_model_cards(profile: str, run: str, manifest: dict, domain: str, catalog=None) -> list[dict]:
    """Write the card of every frozen round of ``domain`` beside its stack file.

    Returns:
        One ``{"stack_id", "round", "version", "path", "markdown"}`` per frozen round.
    """
    out = []
    for rnd in manifest["domains"].get(domain, {}).get("rounds", []):
        if rnd.get("status") != "frozen" or not rnd.get("file"):
            continue
        text = model_card(profile, run, manifest, domain, rnd, catalog)
        path = card_path(rnd["file"])
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        out.append({"stack_id": rnd["stack_id"], "round": rnd["round"], "version": rnd.get("version"),
                    "path": str(path), "markdown": text})
    return out
