"""Task configs for the harness: the repository's YAMLs with their data files made local.

``brainstacks_core/evaluation/tasks/*.yaml`` are the harness's own task YAMLs
(prompt templates, metrics, filters, few-shot settings) with only the dataset
loading changed to ``dataset_path: json``. :func:`task_specs` loads one with the
harness's YAML loader (``include`` and ``!function`` resolved), points each
split's ``data_files`` at the converted jsonl (:mod:`task_data`) and applies the
profile's overrides. ``mmlu_medical`` expands to one ``mmlu_<subject>`` task per
medical subject, ``demo`` to the generated demo tasks.

Under the ``paper`` protocol a task's YAML is ``tasks/paper/<name>.yaml`` where one
exists (GSM8K's Alpaca zero-shot prompt, TruthfulQA without its six-question
primer), else the same YAML; every paper task is zero-shot, and its headline
metric is the mean per-token choice (:mod:`~brainstacks_core.evaluation.protocol`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from brainstacks_core.evaluation import task_data
from brainstacks_core.evaluation.config import MODES, EvalConfig
from brainstacks_core.evaluation.protocol import LM_EVAL, check_protocols, headline
from brainstacks_core.lineage.versioning import content_hash

TASK_DIR = Path(__file__).resolve().parent / "tasks"
_MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"
GROUPS = {"mmlu_medical": tuple(f"mmlu_{s}" for s in task_data.MMLU_MEDICAL), "demo": task_data.DEMO_TASKS}


@dataclass(frozen=True)
class TaskSpec:
    """One harness task ready to evaluate.

    Attributes:
        name: task name (as the harness reports it).
        config: the harness task config (a dict ``get_task_dict`` accepts).
        version: task version: the YAML as written, the data versions, the harness version.
        data: ``{split: (jsonl path, data version)}``.
        metric: the headline metric compared between modes.
        filter: the filter whose ``metric`` is the headline (``none`` for log-likelihood tasks).
    """

    name: str
    config: dict
    version: str
    data: dict[str, tuple[Path, str]] = field(default_factory=dict)
    metric: str = "acc"
    filter: str = "none"


def expand(names: tuple[str, ...] | list[str]) -> list[str]:
    """Task names with groups (``mmlu_medical``, ``demo``) expanded, order kept, duplicates dropped."""
    out: list[str] = []
    for n in names:
        out.extend(GROUPS.get(n, (n,)))
    return list(dict.fromkeys(out))


def available() -> list[str]:
    """Every task name this module can build."""
    return sorted(set(task_data.SHARED_SOURCES) | set(task_data.DEMO_TASKS))


def unknown_tasks(names) -> list[str]:
    """The names in ``names`` that are neither a task nor a group."""
    known = set(available()) | set(GROUPS)
    return [n for n in names if n not in known]


def check_request(modes, names) -> None:
    """Fail fast, naming the culprit, on an unknown mode or task (before any model is loaded).

    Raises:
        ValueError: ``unknown eval mode 'fast' (known: base, ungated, routed)`` or
            ``unknown eval task 'x' (known: ...; groups: ...)``.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown eval mode {', '.join(map(repr, bad))} (known: {', '.join(MODES)})")
    bad = unknown_tasks(names)
    if bad:
        raise ValueError(f"unknown eval task {', '.join(map(repr, bad))} (known: {', '.join(available())}; "
                         f"groups: {', '.join(GROUPS)})")


def task_yaml_path(name: str, protocol: str = LM_EVAL) -> Path:
    """The repository YAML a task is built from (the MMLU and demo templates serve several tasks; a
    protocol's own variant under ``tasks/<protocol>/`` when it has one)."""
    variant = TASK_DIR / protocol / f"{name}.yaml"
    if protocol != LM_EVAL and variant.is_file():
        return variant
    if name.startswith("mmlu_"):
        return TASK_DIR / "_mmlu_template.yaml"
    if name in task_data.DEMO_TASKS and name != "demo_gsm8k":
        return TASK_DIR / "_demo_mc_template.yaml"
    return TASK_DIR / f"{name}.yaml"


def _load(path: Path, resolve: bool) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve)


def task_spec(name: str, cfg: EvalConfig, data_dir: Path, out_dir: Path, seed: int = 0,
              protocol: str = LM_EVAL) -> TaskSpec:
    """Build one task's harness config over local files.

    Args:
        name: a task name from :func:`available`.
        cfg: the ``eval:`` section (few-shot overrides, generation length), as
            :func:`~brainstacks_core.evaluation.protocol.protocol_config` gives it for ``protocol``.
        data_dir: folder of the benchmark files (``eval.data_dir`` resolved).
        out_dir: where converted jsonl files are cached.
        seed: seed of the generated demo tasks.
        protocol: ``lm-eval`` or ``paper`` (the paper's YAML variant, zero-shot, its headline metric).

    Raises:
        ValueError: unknown task name or protocol (lists the known ones).
        FileNotFoundError: a benchmark file is missing.
    """
    check_request((), [name])
    check_protocols([protocol])
    if name in GROUPS:
        raise ValueError(f"{name!r} is a group of tasks: use task_specs")
    path = task_yaml_path(name, protocol)
    config = copy.deepcopy(_load(path, resolve=True))
    raw = _load(path, resolve=False)
    config.update(task=name)
    config.pop("tag", None)
    if name.startswith("mmlu_"):
        subject = name.removeprefix("mmlu_")
        config.update(description=_MMLU_DESCRIPTION.format(subject.replace("_", " ")), task_alias=subject)
    zero_shot = protocol != LM_EVAL  # the paper's benchmarks are all zero-shot: no few-shot split is read
    if zero_shot:
        config.update(num_fewshot=0, fewshot_split=None, training_split=None)
    if name in task_data.DEMO_TASKS:
        data = {"test": task_data.materialize_demo(name, cfg.demo_items, seed + 2000, out_dir)}
    else:
        scored = (config.get("test_split"), config.get("validation_split"))
        data = {split: task_data.materialize(name, split, data_dir, out_dir) for split in task_data.SHARED_SOURCES[name]
                if not zero_shot or split in scored}
    config["dataset_kwargs"] = {"data_files": {split: str(p) for split, (p, _) in data.items()}}
    if name in cfg.num_fewshot and not zero_shot:
        config["num_fewshot"] = cfg.num_fewshot[name]
    if config.get("output_type") == "generate_until":
        # the profile's eval.max_gen_toks wins over the task YAML's own (its value is for standalone use)
        config["generation_kwargs"] = {**config.get("generation_kwargs", {}), "max_gen_toks": cfg.max_gen_toks}
    version = content_hash(name, {k: v for k, v in raw.items() if k != "dataset_kwargs"},
                           {s: v for s, (_, v) in data.items()}, config.get("num_fewshot"),
                           config.get("generation_kwargs"), metadata.version("lm_eval"),
                           *([protocol] if protocol != LM_EVAL else []), length=16)
    metric, filt = headline(protocol, config.get("output_type") == "generate_until")
    return TaskSpec(name, config, version, data, metric=metric, filter=filt)


def task_specs(cfg: EvalConfig, names: list[str] | tuple[str, ...], data_dir: Path, out_dir: Path,
               seed: int = 0, protocol: str = LM_EVAL) -> list[TaskSpec]:
    """:func:`task_spec` for every (expanded) name."""
    return [task_spec(n, cfg, data_dir, out_dir, seed, protocol) for n in expand(names)]
