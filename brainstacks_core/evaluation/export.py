"""Standalone lm-evaluation-harness task YAMLs: what ``brainstacks eval`` scores, for ``lm_eval`` itself.

``brainstacks eval export-tasks DIR`` writes one YAML per task into ``DIR`` and the
task's documents into ``DIR/data/`` (the converted benchmark files, or the generated
demo items), so the harness's own command line runs them with no brainstacks code::

    lm_eval --model hf --model_args pretrained=<model folder> --include_path DIR --tasks demo_math --limit 5

Each YAML is the repository's task YAML (``tasks/*.yaml``) with its ``include`` merged,
its ``task:`` name set (the templates, ``_demo_mc_template.yaml`` and
``_mmlu_template.yaml``, have none), ``data_files`` pointing at the absolute paths of
the files in ``DIR/data/`` (the ``generated`` placeholder of the demo tasks replaced),
and the profile's overrides applied as :func:`~brainstacks_core.evaluation.suite.task_spec`
applies them (few-shot counts, ``max_gen_toks``, the MMLU subject's description).
``!function`` references stay ``!function`` (they name importable ``lm_eval.tasks``
modules). The paths are absolute: after moving ``DIR``, export again.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import yaml

from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.suite import TASK_DIR, task_yaml_path, task_specs
from brainstacks_core.files import atomic_write_text

log = logging.getLogger(__name__)


class FunctionRef(str):
    """A ``!function module.name`` value, kept as text and written back with its tag."""


class _Loader(yaml.SafeLoader):
    """YAML loader that keeps ``!function`` values as :class:`FunctionRef`."""


class _Dumper(yaml.SafeDumper):
    """YAML dumper that writes :class:`FunctionRef` values as ``!function``."""


_Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))
_Dumper.add_representer(FunctionRef, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def raw_task_yaml(path: Path) -> dict:
    """A task YAML with its ``include`` chain merged (the including file wins), functions unresolved."""
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    parent = doc.pop("include", None)
    if parent is None:
        return doc
    return {**raw_task_yaml((path.parent / parent).resolve()), **doc}


def standalone_config(name: str, resolved: dict, yaml_path: Path) -> dict:
    """The YAML mapping of one task: its raw YAML plus what :func:`task_spec` set on the resolved config.

    Args:
        name: the task name.
        resolved: ``TaskSpec.config`` (functions resolved, data files and overrides applied).
        yaml_path: the repository YAML the task comes from.
    """
    doc = copy.deepcopy(raw_task_yaml(yaml_path))
    doc.pop("tag", None)  # the harness's tags (ai2_arc, ...) would group our tasks with its own
    doc["task"] = name
    for key in ("description", "task_alias", "dataset_kwargs", "num_fewshot", "generation_kwargs"):
        if key in resolved:
            doc[key] = copy.deepcopy(resolved[key])
    return {"task": doc.pop("task"), **doc}


def export_tasks(cfg: EvalConfig, names: list[str] | tuple[str, ...], data_dir: Path, out_dir: Path,
                 seed: int = 0) -> list[Path]:
    """Write the standalone YAML of every (expanded) task in ``names`` and its documents to ``out_dir``.

    Args:
        cfg: the ``eval:`` section (few-shot overrides, generation length, demo item count).
        names: task names or groups (``demo``, ``mmlu_medical``).
        data_dir: folder of the benchmark files (``eval.data_dir`` resolved).
        out_dir: the folder to pass to ``lm_eval --include_path``.
        seed: the profile's seed (the generated demo items use ``seed + 2000``, as ``brainstacks eval``).

    Returns:
        The YAML files written, one per task (``<out_dir>/<task>.yaml``).

    Raises:
        ValueError: an unknown task name (named). FileNotFoundError: a benchmark file is missing.
    """
    out = Path(out_dir).resolve()
    specs = task_specs(cfg, names, data_dir, out / "data", seed)
    written = []
    for spec in specs:
        doc = standalone_config(spec.name, spec.config, task_yaml_path(spec.name))
        head = (f"# {spec.name}: exported by `brainstacks eval export-tasks` from "
                f"brainstacks_core/evaluation/tasks/{task_yaml_path(spec.name).relative_to(TASK_DIR)} "
                f"(task version {spec.version}).\n# lm_eval --model hf --model_args pretrained=<model folder> "
                f"--include_path {out} --tasks {spec.name}\n")
        text = head + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        written.append(atomic_write_text(out / f"{spec.name}.yaml", text))
        log.info("exported %s -> %s (data: %s)", spec.name, written[-1],
                 ", ".join(str(p) for p, _ in spec.data.values()))
    return written
