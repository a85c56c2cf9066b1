"""Prefect task of the benchmark-evaluation stage: a thin wrapper over ``brainstacks_core.evaluation.run``.

One task scores every (mode, task) pair of one trained run, because all of them
read the same loaded model (base plus every frozen stack). Every request is cached
in the catalog by the effective model it ran on, so a retry or a re-run scores
only what is missing. Progress goes to a progress artifact updated after each
(mode, task) pair; the table and the plot go to a markdown artifact.
"""

from __future__ import annotations


from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from brainstacks_core.evaluation.record import counts_line
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import Profile
from tasks.artifacts import markdown_artifact, report_artifact
from tasks.progress import ProgressArtifact, artifact_key, progress_artifact
from tasks.run_context import retry_unless, run_ids


def eval_progress(key: str, title: str) -> ProgressArtifact:
    """A ``progress_cb(info)`` for ``evaluate_model``: one progress artifact, updated per (mode, task) pair."""

    def render(info: dict) -> tuple[float, str, bool]:
        done, total = int(info["done"]), max(1, int(info["total"]))
        where = "starting" if info.get("mode") is None else f"{info['mode']} / {info['task']} done"
        if info.get("protocol"):
            where = f"{info['protocol']} protocol: {where}"
        return 100.0 * done / total, (f"{title}: {where} ({done}/{info['total']} mode x task pairs; "
                                      f"{info['computed']} requests computed, {info['reused']} from the cache)"), True

    return progress_artifact(key, title, render)


# a bad request, an untrained run or a missing benchmark file fails at once; anything else is retried
retry_unless_request_error = retry_unless(ValueError, FileNotFoundError)


@task(name="evaluate-run", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_request_error,
      cache_policy=NO_CACHE)
def evaluate_task(profile: Profile, run_name: str = "main",
                  modes: list[str] | None = None, tasks: list[str] | None = None,
                  limit: int | None = None, protocols: list[str] | None = None) -> dict:
    """Benchmark evaluation of one trained run on lm-evaluation-harness (base / ungated / routed), under
    each of ``protocols`` (default: the profile's ``eval.protocols``), the run loaded once.

    Returns:
        ``{"protocol", "version", "markdown", "plot", "plots", "results", "computed", "reused", "per_mode",
        "skipped", "protocols"}``: the first protocol's keys, every protocol's under ``protocols``
        (``markdown``: every protocol's own table in turn).
    """
    from brainstacks_core.evaluation.run import evaluate_profile

    log = get_run_logger()
    title = f"{profile.name}/{run_name} benchmark evaluation"
    hook = eval_progress(artifact_key("eval", profile.name, run_name), title)
    try:
        out = evaluate_profile(profile.eval_setup, run_name, Catalog.for_context(profile.context), modes=modes, tasks=tasks,
                               limit=limit, run_ids=run_ids(), progress_cb=hook, protocols=protocols)
    except BaseException:
        hook.finish("failed (see the flow run's logs)", progress=0.0)
        raise
    by_protocol = out.get("protocols") or {}
    tag = (lambda p: f"[{p}] ") if len(by_protocol) > 1 else (lambda p: "")
    hook.finish("done: " + " ".join(f"{tag(p)}{counts_line(o['per_mode'])}" for p, o in by_protocol.items())
                if out["version"] is not None else
                "nothing evaluated: " + "; ".join(f"{m} skipped ({w})" for m, w in out["skipped"].items()))
    for p, o in by_protocol.items():
        for mode, why in o["skipped"].items():
            log.warning("%s protocol: %s skipped: %s", p, mode, why)
        log.info("eval %s (%s protocol): %s %s", o["version"], p, counts_line(o["per_mode"]), o["results"])
    if out["version"] is not None:
        markdown_artifact(key=artifact_key("eval-report", profile.name, run_name), markdown=out["markdown"],
                          plots=out["plots"], description=f"{title}: scores ± stderr, paired tests, MDD, plot "
                                                          f"({', '.join(by_protocol)} protocol)")
        report_artifact(profile.name, out["report"])  # the evaluation section is in the report now
    keep = ("protocol", "version", "markdown", "plot", "plots", "results", "computed", "reused", "per_mode",
            "skipped", "report")
    return {**{k: out[k] for k in keep if k in out},
            "protocols": {p: {k: o[k] for k in keep if k in o} for p, o in by_protocol.items()}}


@task(name="eval-shard", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_request_error,
      cache_policy=NO_CACHE)
def eval_shard_task(profile: Profile, run_name: str, shard: int, n_shards: int, modes: list[str] | None = None,
                    tasks: list[str] | None = None, limit: int | None = None,
                    protocols: list[str] | None = None) -> dict:
    """One shard of a run's benchmark evaluation (its (mode, task, document range) units' request scores into
    the shared catalog); see ``brainstacks_core.evaluation.shards``. Retried on failure; Dask re-runs it on
    another worker when its worker dies, and the retry reuses every score the dead one flushed."""
    from brainstacks_core.evaluation.shards import run_eval_shard

    out = run_eval_shard(profile.eval_setup, run_name, shard, n_shards, Catalog.for_context(profile.context),
                         modes=modes, tasks=tasks, limit=limit, protocols=protocols)
    get_run_logger().info("eval shard %d/%d: %d units, %d requests, %d computed, %d reused, %d forwards in %d "
                          "writes, load %.1f s of %.1f s", shard, n_shards, len(out["units"]), out["requests"],
                          out["computed"], out["reused"], out["forwards"], out["writes"], out["load_seconds"],
                          out["seconds"])
    return out
