"""``evaluate-fanout`` flow: the benchmark evaluation of one trained run as shards on a Dask cluster.

Each shard owns one document range of every (protocol, mode, task) the evaluation scores
(``brainstacks_core/evaluation/shards.py``), loads the run once and writes its request
scores to the catalog's ``eval_scores`` every ``eval.flush_forwards`` (K) forwards; the
``evaluate`` flow then scores as usual and finds every request cached. Why Dask, and which
cluster: ``flows/fanout.py`` (shared with ``oracle-fanout``).

Settings: ``eval.shards`` (1: no fan-out, the default; 0: one shard per worker of the
cluster; N: N shards), ``eval.flush_forwards`` (K), ``router.dask_address`` or
``$BRAINSTACKS_DASK_ADDRESS`` (none: a local cluster of one worker process per shard).
"""

from __future__ import annotations

from prefect import flow

from brainstacks_core.profile import Profile, load_profile
from flows.eval_params import EvalMode, EvalProtocol, EvalTask, ItemLimit
from flows.fanout import dask_address, fanout_runner, require_shared_catalog, shard_count
from flows.params import ProfilePath, RunName
from tasks.evaluation import eval_shard_task


@flow(name="evaluate-fanout")
def evaluate_fanout(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main", n_shards: int = 2,
                    modes: list[EvalMode] | None = None, tasks: list[EvalTask] | None = None,
                    limit: ItemLimit | None = None, artifact_root: str | None = None,
                    protocols: list[EvalProtocol] | None = None) -> list[dict]:
    """Run the ``n_shards`` evaluation shards of ``run_name`` in parallel and wait for all of them.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in).
        run_name: Trained run under <store>/training whose evaluation is scored (default: main).
        n_shards: How many shards every (mode, task)'s documents are split into.
        modes: Modes to score (base, ungated, routed). Empty: the profile's eval.modes.
        tasks: Benchmarks (harness task names or groups). Empty: the profile's eval.tasks.
        limit: Items per task (the first N). Empty: the profile's eval.limit and eval.task_limits.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
        protocols: Evaluation protocols (lm-eval, paper). Empty: the profile's eval.protocols.
    """
    profile = load_profile(config_path, artifact_root)
    futures = [eval_shard_task.submit(profile, run_name, i, n_shards, modes or None, tasks or None, limit,
                                      protocols or None) for i in range(n_shards)]
    return [f.result() for f in futures]


def run_eval_fanout(profile: Profile, run_name: str = "main", config_path: str | None = None,
                    artifact_root: str | None = None, modes: list[str] | None = None,
                    tasks: list[str] | None = None, limit: int | None = None,
                    protocols: list[str] | None = None) -> list[dict] | None:
    """Fan the evaluation of ``run_name`` out when the profile asks for it and the evaluation is not current.

    Returns:
        The shards' counts, or None when there was nothing to fan out (``eval.shards: 1``, or the last
        evaluation already scored exactly this request: the evaluation then finds every score cached).
    """
    from brainstacks_core.evaluation.shards import evaluation_is_current
    from brainstacks_core.lineage.catalog import Catalog

    if profile.eval.shards == 1 or evaluation_is_current(profile.eval_setup, run_name,
                                                         Catalog.for_context(profile.context), modes, tasks,
                                                         limit, protocols):
        return None
    address = dask_address(profile.router.dask_address)
    require_shared_catalog(profile, address, "eval.shards")
    n = shard_count(profile.eval.shards, address)
    return evaluate_fanout.with_options(task_runner=fanout_runner(address, n))(
        config_path=config_path or str(profile.context.source_path), run_name=run_name, n_shards=n,
        modes=modes, tasks=tasks, limit=limit, artifact_root=artifact_root, protocols=protocols)
