"""Prefect tasks of the training stage: thin wrappers over ``brainstacks_core.training.run``.

Inputs are the flow's loaded profile (read once per flow run) and names; data is
resolved by version from the catalog inside the core, so nothing large crosses a
task boundary, and Prefect's result cache is off (``NO_CACHE``: nothing is hashed;
the core skips what is done by version). Retries are
safe: training resumes from the run's manifest and never retrains a finished round.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import Profile
from tasks.artifacts import markdown_artifact, report_artifact, table_artifact
from tasks.progress import artifact_key, progress_hook
from tasks.run_context import run_ids


@task(name="build-base", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def build_base_task(profile: Profile, data_versions: dict[str, str] | None = None) -> dict:
    """Build (tiny) or resolve (hub) the base model; returns its identity."""
    from brainstacks_core.training.run import ensure_base

    cat = Catalog.for_context(profile.context)
    info = ensure_base(profile.training_setup, None, cat, run_ids())  # the tiny base has its own pinned corpus
    get_run_logger().info("base %s (%s) at %s", info.fingerprint, info.source, info.path)
    return {"fingerprint": info.fingerprint, "path": str(info.path), "source": info.source}


@task(name="resolve-data-versions", cache_policy=NO_CACHE)
def resolve_data_task(profile: Profile) -> dict[str, str]:
    """Pin the latest dataset version of every curriculum domain for this run."""
    from brainstacks_core.training.run import resolve_data_versions

    cat = Catalog.for_context(profile.context)
    versions = resolve_data_versions(profile.training_setup, cat)
    # what this run reads: every domain's train/val (training, null space) and test (forgetting) split
    cat.record_reads([f"{v.rsplit('-', 1)[0]}-{s}" for v in versions.values() for s in ("train", "val", "test")],
                     run_ids())
    get_run_logger().info("data versions: %s", versions)
    return versions


@task(name="train-domain", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def train_domain_task(profile: Profile, domain: str, run_name: str = "main",
                      null_space: bool | None = None, data_versions: dict[str, str] | None = None) -> dict:
    """Train one domain's boosting rounds (earlier domains must be done or are resumed first).

    Holds the run's lock while training; when another process holds it and the
    profile says ``orchestration.on_busy: skip``, logs that and returns ``skipped``.
    Training progress goes to a progress artifact (domain, round, step, val loss); every frozen stack of
    the domain gets a model card (a markdown artifact and ``<stack>.model_card.md`` beside its file).
    """
    from brainstacks_core.training.run import train_profile
    from brainstacks_core.training.run_lock import RunBusyError

    log = get_run_logger()
    hook = progress_hook(artifact_key("training", profile.name, run_name, domain),
                         f"{profile.name}/{run_name}", profile.training.max_rounds)
    try:
        manifest = train_profile(profile.training_setup, run_name, null_space, until_domain=domain,
                                 catalog=Catalog.for_context(profile.context), run_ids=run_ids(),
                                 data_versions=data_versions, progress=hook)
    except RunBusyError as exc:
        log.warning("skipped: %s", exc)
        hook.finish(f"**{domain}** skipped ({exc})", progress=0.0)
        return {"domain": domain, "run": run_name, "rounds": [], "stop_reason": None, "skipped": str(exc)}
    except BaseException:
        hook.finish(f"**{domain}** failed (see the flow run's logs)", progress=0.0)
        raise
    entry = manifest["domains"][domain]
    frozen = sum(r["status"] == "frozen" for r in entry["rounds"])
    hook.finish(f"**{domain}** unchanged, {frozen} stacks reused from {entry['reused_from']}"
                if entry.get("reused_from") else
                f"**{domain}** done: {frozen} frozen of {len(entry['rounds'])} rounds ({entry.get('stop_reason')})")
    cat = Catalog.for_context(profile.context)
    if entry.get("reused_from"):
        log.info("%s: unchanged (base, settings, its data and every earlier domain): stacks reused from %s",
                 domain, entry["reused_from"])
        cat.record_reads([r["version"] for r in entry["rounds"] if r["status"] == "frozen"], run_ids())
    model_cards(profile, run_name, manifest, domain, cat)
    for r in entry["rounds"]:
        log.info("%s round %d: %s, val loss %.4f -> %.4f (%s)", domain, r["round"], r["status"],
                 r["loss_before"], r["loss_after"], r["reason"])
    return {"domain": domain, "run": run_name, "rounds": [
        {k: r[k] for k in ("round", "stack_id", "status", "loss_before", "loss_after", "version")}
        for r in entry["rounds"]], "stop_reason": entry.get("stop_reason"),
        "reused_from": entry.get("reused_from")}


def model_cards(profile: Profile, run_name: str, manifest: dict, domain: str, catalog: Catalog) -> list[dict]:
    """Write each frozen stack's model card beside its file and show it as a markdown artifact."""
    from brainstacks_core.reporting.model_card import write_model_cards

    cards = write_model_cards(profile.name, run_name, manifest, domain, catalog)
    for card in cards:
        markdown_artifact(artifact_key("model-card", profile.name, run_name, card["stack_id"]), card["markdown"],
                          description=f"Model card of stack {card['stack_id']} ({profile.name}/{run_name}), "
                                      f"also at {card['path']}")
    return cards


@task(name="experiment-1", cache_policy=NO_CACHE)
def experiment1_task(profile: Profile) -> dict:
    """MoE-LoRA vs parameter-matched single LoRA on one domain (paper 4.1)."""
    from brainstacks_core.training.run import run_experiment1_for_profile

    return run_experiment1_for_profile(profile.training_setup, Catalog.for_context(profile.context), run_ids())


@task(name="report", cache_policy=NO_CACHE)
def report_task(profile: Profile, run_names: list[str]) -> dict:
    """The report's training section (plots, rounds, forgetting, Experiment 1); rebuilds the report and its
    markdown artifact; returns the report's paths and text."""
    from brainstacks_core.reporting.report import build_report

    report = build_report(profile.context, run_names, Catalog.for_context(profile.context), run_ids())
    report_artifact(profile.name, report)
    return report


@task(name="paper-tables", cache_policy=NO_CACHE)
def paper_report_task(profile: Profile, run_names: list[str]) -> dict:
    """The report's paper section (Tables 1-4, Figs. 4-10; its subspace figures are measured here, on the
    worker, from the runs' frozen stacks); rebuilds the report and its artifact, and publishes the section
    as its own markdown artifact, figures inline."""
    from brainstacks_core.reporting.report import build_paper_report

    report = build_paper_report(profile.context, run_names, Catalog.for_context(profile.context), run_ids(),
                                setup=profile.training_setup)
    report_artifact(profile.name, report)
    paper = report["paper"]
    markdown_artifact(artifact_key("paper-tables", profile.name), paper["markdown"], plots=paper["plots"],
                      description=f"The paper's Tables 1-4 and Figs. 4-10 for profile {profile.name}, also in "
                                  f"{report['path']}")
    return report


@task(name="run-summary", cache_policy=NO_CACHE)
def run_summary_task(profile: Profile, run_name: str) -> dict:
    """One run's round table and forgetting matrix (markdown + PNGs), and a table artifact of its stacks."""
    from brainstacks_core.reporting.report import run_summary

    summary = run_summary(profile.context, run_name)
    table_artifact(artifact_key("stacks", profile.name, run_name), summary["stacks"],
                   description=f"Stacks trained in run {profile.name}/{run_name}: domain, round, status (frozen or "
                               f"discarded), validation loss before/after, catalog version")
    return summary
