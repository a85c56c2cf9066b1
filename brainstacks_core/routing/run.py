"""The routing stage of a profile's run: oracle -> meta-router -> routed losses, panels, report.

What belongs here: :func:`route_profile`, what ``brainstacks run``, ``brainstacks
train-router`` and the ``train-router`` flow call after continual training, and
:func:`trained_router` (the run's router, for ``generate`` and routed evaluation).

Every step is cached by its inputs: oracle losses in the catalog (a re-run runs 0
oracle forwards), the router folder by (config, domains, oracle version, stacks,
base, code), so a second call recomputes only the routed losses and panels.

Outputs under ``<store>/routing/<run>/``: ``oracle/<version>/targets.parquet``,
``router/<key>/`` (weights, report, heatmap), ``report.md`` and ``routed.json``.
Catalog: ``oracle://<profile>/<run>`` (inputs: every stack, the base, the router
splits' dataset versions), ``router://<profile>/<run>`` (inputs: the oracle, the
stacks, the base) and ``routing-eval://<profile>/<run>`` (inputs: router, oracle,
the test splits).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from brainstacks_core.files import atomic_write, atomic_write_json, atomic_write_text, sha256_file
from brainstacks_core.lineage.store_sync import materialise_pointer, publish_pointer
from brainstacks_core.lineage.versioning import code_version, config_hash, content_hash
from brainstacks_core.reporting.sections import ROUTING, publish_section, run_section
from brainstacks_core.routing.config import RoutingSetup
from brainstacks_core.routing.oracle import combination_markdown, combination_table, discover
from brainstacks_core.routing.pair_loss import routed_losses
from brainstacks_core.routing.panels import panels_markdown, three_panels
from brainstacks_core.routing.run_inputs import (POINTER_KIND, RESULT_FILE, current_run_dir_of, oracle_pairs,
                                                 routed_test_rows, routing_dir, routing_key, run_pointer)

log = logging.getLogger(__name__)


def trained_router(setup: RoutingSetup, run_name: str, model, tokenizer, catalog=None):
    """The run's latest trained router (a :class:`~brainstacks_core.routing.router.TrainedRouter`), or None.

    Found through the catalog's ``router://<profile>/<run>`` (checksum verified on load).
    """
    from brainstacks_core.routing.router import load_trained_router, router_uri

    if catalog is None:
        return None
    ctx = setup.run.context
    art = catalog.latest(router_uri(ctx.name, run_name))
    if art is None:
        return None
    folder = Path(art["path"]).parent
    if "://" in str(art["path"]):  # an object store: the routing folder another worker published, by version
        from brainstacks_core.routing.router import META_FILE

        materialise_pointer(ctx, POINTER_KIND, run_name)
        folder = next((m.parent for m in sorted((routing_dir(ctx, run_name) / "router").glob(f"*/{META_FILE}"))
                       if json.loads(m.read_text()).get("version") == art["version"]), folder)
    return load_trained_router(folder, model, tokenizer, setup.router, expected_sha256=art["sha256"])


def stale_router_reason(router, stack_versions: dict[str, str], command: str) -> str | None:
    """Why ``router`` must not route this run's stacks, or None when it was trained on exactly them.

    A router trained before the run retrained (other stack versions) learned which of
    *those* stacks help; serving it over the new ones would route blind. Routed
    evaluation and ``brainstacks generate`` both refuse it with ``command`` (the
    train-router command line that fixes it).
    """
    trained_on = (router.metadata.get("lineage") or {}).get("stack_versions")
    if trained_on is not None and dict(trained_on) != dict(stack_versions):
        changed = sorted(set(trained_on.items()) ^ set(stack_versions.items()))
        return (f"the meta-router {router.version} was trained on other stack versions than the run now has "
                f"({', '.join(sorted({k for k, _ in changed}))}): run `{command}` first")
    return None


def _save_targets(result, folder: Path) -> Path:
    path = folder / "targets.parquet"
    if not path.exists():
        with atomic_write(path) as tmp:
            result.targets.to_parquet(tmp, index=False)
    return path


def routed_table(test: pd.DataFrame, losses: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Mean loss per source domain and mode (columns = modes), plus an ``all`` row."""
    frame = pd.DataFrame({m: x.double().numpy() for m, x in losses.items()}).assign(domain=test["source_domain"])
    table = frame.groupby("domain", sort=False).mean()
    table.loc["all"] = frame.drop(columns="domain").mean()
    return table


def table_markdown(table: pd.DataFrame) -> str:
    """Routed losses as markdown (lower is better; routed vs ungated and vs oracle)."""
    cols = list(table.columns)
    lines = ["| domain | " + " | ".join(cols) + " | routed ≤ ungated | routed / oracle |",
             "|---|" + "---|" * (len(cols) + 2)]
    for dom, r in table.iterrows():
        ok = "yes" if r["routed"] <= r["ungated"] + 1e-9 else "**no**"
        lines.append(f"| {dom} | " + " | ".join(f"{r[c]:.4f}" for c in cols)
                     + f" | {ok} | {r['routed'] / r['oracle']:.3f} |")
    return "\n".join(lines)


def cached_routing(setup: RoutingSetup, run_name: str, key: str, manifest: dict, catalog=None,
                   run_ids: dict | None = None) -> dict | None:
    """The last routing's results when nothing it depends on changed (:func:`routing_key`), else None.

    Loads no model. What a computed re-run checks is checked here too: every frozen stack
    file against the manifest's sha256 (:func:`~brainstacks_core.training.repair.verify_round`),
    the router's weights, the oracle targets and the report against their recorded sha256.
    The oracle, router and routing evaluation are recorded again under this run's ids
    (``used`` events), as a computed re-run records them.
    """
    from brainstacks_core.routing.router import META_FILE, WEIGHTS_FILE, record_router
    from brainstacks_core.training.repair import RunInconsistentError, verify_round

    out_dir = routing_dir(setup.run.context, run_name)
    try:
        saved = json.loads((out_dir / RESULT_FILE).read_text())
        summary = json.loads((out_dir / "routed.json").read_text())
        text = (out_dir / "report.md").read_text()[:-1]
        meta = json.loads((Path(saved["router_folder"]) / META_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return None
    if saved.get("key") != key or not all(Path(p).exists() for p in saved["plots"]):
        return None
    files = [(r["path"], r["sha256"]) for r in saved["records"]]
    files.append((str(Path(saved["router_folder"]) / WEIGHTS_FILE), meta["sha256"]))
    if any(not Path(f).exists() or sha256_file(f) != sha for f, sha in files):
        log.info("routing of %s: a result file changed since it was written; routing again", run_name)
        return None
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            problem = verify_round(r)
            if problem:
                raise RunInconsistentError(current_run_dir_of(setup, run_name), dom, r["round"], problem)
    if catalog is not None:
        oracle_record, eval_record = saved["records"]
        catalog.record_artifact(**oracle_record, run_ids=run_ids)
        record_router(catalog, saved["router_folder"], meta, setup.run.context.name, run_name, run_ids=run_ids)
        catalog.record_artifact(**eval_record, run_ids=run_ids)
    o = summary["oracle"]  # as a computed re-run reports it: every oracle loss reused from the catalog
    summary["oracle"] = {**o, "computed": 0, "reused": o["computed"] + o["reused"], "forwards": 0}
    log.info("routing of %s: inputs unchanged (key %s): results of %s reused, no model loaded", run_name, key,
             out_dir)
    return {"markdown": text, "plots": saved["plots"], "summary": summary, "version": saved["records"][1]["version"]}


def route_profile(setup: RoutingSetup, run_name: str = "main", catalog=None, run_ids: dict | None = None,
                  progress_cb: Callable[[dict], None] | None = None, progress: bool = True) -> dict:
    """Oracle discovery, router training and routed evaluation of run ``run_name``.

    ``setup`` is ``Profile.routing_setup`` (the trained run's sections and ``router:``).

    The routing's markdown and plots become the report's routing section
    (``reports/sections/20-routing-<run>.md``) and ``report.md`` is rebuilt
    (:func:`~brainstacks_core.reporting.sections.publish_section`).

    Returns:
        ``{"oracle": {...}, "router": {...}, "table": DataFrame, "markdown", "plots", "version", "report"}``
        (``report``: the rebuilt report, ``assemble_report``'s dict).
    """
    ctx = setup.run.context
    materialise_pointer(ctx, POINTER_KIND, run_name)  # an object store: what another worker routed already
    pointer, manifest, data_versions = run_pointer(setup, run_name)
    key = routing_key(setup, manifest, pointer)
    out = cached_routing(setup, run_name, key, manifest, catalog, run_ids)
    if out is None:
        out = _route(setup, run_name, catalog, run_ids, progress_cb, progress, key, manifest, data_versions)
    out["report"] = publish_section(ctx, run_section(ROUTING, run_name), out["markdown"], out["plots"],
                                    [out["version"]], catalog, run_ids)
    return out


def _route(setup: RoutingSetup, run_name: str, catalog, run_ids: dict | None,
           progress_cb: Callable[[dict], None] | None, progress: bool, key: str, manifest: dict,
           data_versions: dict) -> dict:
    """The work of :func:`route_profile` when its cached result does not apply."""
    from brainstacks_core.routing.router_run import train_and_save_router
    from brainstacks_core.training.continual import as_trained_stacks
    from brainstacks_core.training.trained_run import load_run

    cfg, ctx, curriculum = setup.router, setup.run.context, list(setup.run.curriculum)
    out_dir = routing_dir(ctx, run_name)
    run = load_run(setup.run, run_name, catalog)
    model, tok = run["model"], run["tokenizer"]
    stacks = {d: s for d, s in run["domain_stacks"].items() if s}
    domains = [d for d in curriculum if d in stacks]
    stack_versions = run["stack_versions"]

    # 1. oracle on the router split
    pairs = oracle_pairs(setup, domains, catalog, data_versions)
    oracle = discover(model, tok, pairs, stacks, stack_versions, run["base_fingerprint"], cfg, catalog,
                      domains=domains, progress=progress,
                      progress_cb=(lambda info: progress_cb({"stage": "oracle", **info})) if progress_cb else None)
    odir = out_dir / "oracle" / oracle.version
    targets_path = _save_targets(oracle, odir)
    router_split_versions = []
    if catalog is not None:
        from brainstacks_core.data.pipeline import load_prepared

        router_split_versions = [load_prepared(ctx, d, catalog, data_versions.get(d)).router_uri_version
                                 for d in domains]
    oracle_record = dict(uri=f"oracle://{ctx.name}/{run_name}", version=oracle.version, kind="oracle",
                         path=str(targets_path), sha256=sha256_file(targets_path), code_version=code_version(),
                         config_hash=config_hash(cfg),
                         inputs=[*stack_versions.values(), run["base_fingerprint"], *router_split_versions],
                         metadata={"pairs": len(pairs), "computed": oracle.computed, "reused": oracle.reused,
                                   "forwards": oracle.forwards, "regret": oracle.regret})
    if catalog is not None:
        catalog.record_artifact(**oracle_record, run_ids=run_ids)

    # 2. the meta-router
    def loss_under(rows: pd.DataFrame, weights: torch.Tensor) -> torch.Tensor:
        return routed_losses(model, tok, rows, stacks, domains, weights, cfg.max_length, cfg.oracle_batch_size)

    lineage = {"oracle_version": oracle.version, "stack_versions": dict(stack_versions),
               "base_fingerprint": run["base_fingerprint"]}
    fitted = train_and_save_router(oracle.targets, domains, model, tok, cfg, out_dir / "router", lineage,
                                   catalog=catalog, profile_name=ctx.name, run_name=run_name,
                                   loss_under=loss_under, run_ids=run_ids,
                                   device=next(model.parameters()).device,  # the worker's GPU when it has one
                                   progress_cb=(lambda info: progress_cb({"stage": "router", **info}))
                                   if progress_cb else None)
    router = fitted["router"]

    # 3. routed evaluation on the test split: base, ungated, as-trained, oracle, routed
    test, test_versions = routed_test_rows(setup, domains, catalog, data_versions, tok)
    ones = torch.ones(len(test), len(domains))
    losses = {"base": loss_under(test, torch.zeros_like(ones)), "ungated": loss_under(test, ones)}
    as_trained = torch.zeros(len(test))
    for d in domains:
        sel = torch.tensor((test["source_domain"] == d).to_numpy())
        keep = set(as_trained_stacks(manifest, d))
        w = torch.tensor([[1.0 if any(s in keep for s in stacks[x]) else 0.0 for x in domains]]).expand(len(test), -1)
        as_trained[sel] = loss_under(test[sel.numpy()].reset_index(drop=True), w[sel])
    losses["as_trained"] = as_trained
    test_oracle = discover(model, tok, test, stacks, stack_versions, run["base_fingerprint"],
                           cfg.model_copy(update={"exhaustive_sample": 0}), catalog, domains=domains,
                           progress=progress)
    losses["oracle"] = torch.tensor(test_oracle.targets["oracle_loss"].to_numpy())
    weights = router.domain_weights(list(test["prompt"].astype(str)))  # [N, D], floor and gate applied
    losses["routed"] = loss_under(test, weights)
    table = routed_table(test, losses)
    gain = float(((losses["base"] - losses["routed"]).sum() / (losses["base"] - losses["oracle"]).sum()).item())

    # 4. pictures and panels
    from brainstacks_core.reporting.routing_plots import plot_routing_heatmap

    heat = plot_routing_heatmap(list(test["source_domain"]), weights, domains, out_dir / "routing_heatmap_test.png",
                                title="test prompts: mean routed weight")
    sample = test.groupby("source_domain", sort=False).head(1).reset_index(drop=True)
    panels = three_panels(model, tok, sample, router, stacks, max_new_tokens=24)
    combos = combination_table(oracle.targets)
    rep = fitted["report"]
    md = ["## Routing (oracle, meta-router, routed inference)", "",
          f"Oracle on {len(oracle.targets)} router-split prompts: {oracle.computed + oracle.reused} (prompt, "
          f"combination) losses, cached in the catalog (what each call computed: the task log and routed.json). "
          f"Greedy vs exhaustive on {oracle.regret.get('n', 0)} "
          f"prompts: mean regret {oracle.regret.get('mean_regret', float('nan')):.4f}, optimal in "
          f"{100 * oracle.regret.get('optimal_fraction', float('nan')):.0f}%.", "",
          "### Winning combinations per prompt domain (oracle)", "", combination_markdown(combos), "",
          "### Router vs baselines (validation prompts, against the oracle's targets)", "",
          "| router | mean AUROC | mean F1 | gain recovered |", "|---|---|---|---|"]
    for name, label in (("router", "meta-router"), ("label", "nominal-domain label"), ("probe", "linear probe")):
        r = rep[name]
        md.append(f"| {label} | {r['mean_auroc']:.3f} | {r['mean_f1']:.3f} | {r.get('gain_recovered', float('nan')):.3f} |")
    r = rep["router"]
    md += ["", "| domain | AUROC | F1 |", "|---|---|---|"]
    md += [f"| {d} | {r['auroc'][d]:.3f} | {r['f1'][d]:.3f} |" for d in domains]
    md += ["", f"### Routed loss on the held-out test split (chat floor {cfg.chat_floor}, gate {cfg.gate_threshold}; "
           f"gain recovered over base: {gain:.3f})", "", table_markdown(table), "",
           "### Answers: own domain's stacks, ungated, routed", "", panels_markdown(panels), "",
           f"Plots: {fitted['heatmap']}, {heat}"]
    text = "\n".join(md)
    summary = {"table": table.reset_index(names="domain").to_dict("records"), "gain_recovered_test": gain,
               "router": fitted["summary"], "oracle": {"computed": oracle.computed, "reused": oracle.reused,
                                                       "forwards": oracle.forwards, "regret": oracle.regret,
                                                       "version": oracle.version},
               "router_version": fitted["version"]}
    version = content_hash("routing-eval", fitted["version"], test_versions, text)
    atomic_write_json(out_dir / "routed.json", summary)
    path = atomic_write_text(out_dir / "report.md", text + "\n")
    eval_record = dict(uri=f"routing-eval://{ctx.name}/{run_name}", version=version, kind="eval", path=str(path),
                       sha256=sha256_file(path), code_version=code_version(), config_hash=config_hash(cfg),
                       inputs=[fitted["version"], oracle.version, *test_versions],
                       metadata={k: v for k, v in summary.items() if k != "table"})
    if catalog is not None:
        catalog.record_artifact(**eval_record, run_ids=run_ids)
    plots = [fitted["heatmap"], str(heat)]
    atomic_write_json(out_dir / RESULT_FILE, {"key": key, "plots": plots, "router_folder": fitted["folder"],
                                              "records": [oracle_record, eval_record]})
    publish_pointer(ctx, POINTER_KIND, run_name, [f for f in out_dir.rglob("*") if f.is_file()
                                                  and not f.name.startswith(".")], key=key)  # last (no-op locally)
    return {"markdown": text, "plots": plots, "summary": summary, "table": table,
            "version": version, "router": router, "oracle": oracle, "combinations": combos}


def input_uris(setup: RoutingSetup, run_name: str) -> list[str]:
    """Catalog URIs the routing of run ``run_name`` reads, known before it runs (OpenLineage START): the
    base, every frozen stack of the run's current folder, and each domain's router and test split."""
    ctx = setup.run.context
    uris = [f"base://{ctx.name}"]
    from brainstacks_core.training.run import current_run_dir

    try:
        manifest = json.loads((current_run_dir(ctx, run_name) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    uris += [f"stack://{ctx.name}/{run_name}/{d}/r{r['round']}" for d in manifest.get("domains_order", [])
             for r in manifest["domains"].get(d, {}).get("rounds", []) if r.get("status") == "frozen"]
    return uris + [f"dataset://{ctx.name}/{d}/{s}" for d in setup.run.curriculum for s in ("router", "test")]
