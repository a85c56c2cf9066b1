"""Typed ``eval:`` profile section: which benchmarks, in which modes, on how many items.

:class:`EvalSetup` is what a run's evaluation needs (the routing setup, for the
trained run and its meta-router, and ``eval:``), built by ``Profile.eval_setup``.
Pure pydantic (no torch, no lm-eval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from brainstacks_core.routing.config import RoutingSetup

Mode = Literal["base", "ungated", "routed"]
MODES: tuple[str, ...] = get_args(Mode)
Protocol = Literal["lm-eval", "paper"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
PAPER_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "truthfulqa_mc1", "mmlu_medical", "medqa_4options",
               "medmcqa", "gsm8k")


class PaperProtocolConfig(BaseModel):
    """The paper's own evaluation protocol (paper 4.3.1), run beside lm-eval's when ``eval.protocols`` lists it.

    Every multiple-choice item is scored by the mean per-token log-probability of each
    choice (the choice's token count from the model's tokenizer), every task is
    zero-shot, GSM8K is generated from an Alpaca instruction prompt and exact-matched;
    ``limit`` items per task, ``max_length`` tokens of context. The other ``eval:``
    settings (data_dir, batch_size, alpha, power, bootstrap_iters, demo_items) are shared.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...] = Field(PAPER_TASKS, description="Task names scored under the paper protocol (the "
                                                            "paper's 8 benchmarks; MMLU = the six medical "
                                                            "subjects of the local file).")
    modes: tuple[Mode, ...] = Field(("base", "routed"), description="Modes (the paper compares base and "
                                                                    "routed).")
    limit: int = Field(200, ge=1, description="Items per task, the first N (the paper's n = 200).")
    max_length: int = Field(512, ge=16, description="Context length in tokens (the paper's 512).")
    max_gen_toks: int = Field(256, ge=1, description="Most tokens generated per GSM8K answer.")


class EvalConfig(BaseModel):
    """Benchmark evaluation (paper 4.3.1), scored by lm-evaluation-harness.

    The fields below are the ``lm-eval`` protocol's (the harness's own scoring and
    few-shot settings); ``paper`` holds the paper protocol's, run when ``protocols``
    lists it (:mod:`~brainstacks_core.evaluation.protocol`). Task names are the YAMLs in
    ``brainstacks_core/evaluation/tasks/`` (real benchmarks over ``data_dir``) or the generated
    ``demo_*`` tasks (no files).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run benchmark evaluation at the end of the pipeline.")
    tasks: tuple[str, ...] = Field((), description="Task names (YAMLs under brainstacks_core/evaluation/tasks, "
                                                   "e.g. arc_easy, hellaswag, gsm8k, or the generated demo_* "
                                                   "tasks); empty = none.")
    modes: tuple[Mode, ...] = Field(("base", "ungated", "routed"), description="Model modes to score.")
    limit: int | None = Field(None, ge=1, description="Items per task (None = all); the first N items.")
    task_limits: dict[str, int] = Field(default_factory=dict, description="Per-task item limits that override "
                                                                          "`limit` (task name -> N).")
    data_dir: Path = Field(Path("../shared/data"), description="Folder of the benchmark files; a relative path "
                                                               "resolves against the repository root, as data "
                                                               "sources do.")
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")
    max_length: int | None = Field(None, ge=16, description="Context length for scoring (None = the model's "
                                                            "max_position_embeddings).")
    max_gen_toks: int = Field(256, ge=1, description="Most tokens generated per generate_until request (GSM8K).")
    num_fewshot: dict[str, int] = Field(default_factory=dict, description="Per-task few-shot overrides (task "
                                                                          "name -> shots); absent = the "
                                                                          "harness's own setting.")
    bootstrap_iters: int = Field(1000, ge=1, description="Harness stderr bootstrap iterations (means use the "
                                                         "closed form) and paired-bootstrap resamples.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided significance level of the paired tests and "
                                                       "of the minimum detectable difference.")
    power: float = Field(0.8, gt=0, lt=1, description="Power at which the minimum detectable difference is "
                                                      "computed.")
    demo_items: int = Field(60, ge=4, description="Items per generated demo task.")
    flush_forwards: int = Field(8, ge=1, description="Computed request scores are written to the catalog after "
                                                     "at most this many forwards (K), so a worker killed "
                                                     "mid-evaluation loses at most K forwards of work.")
    shards: int = Field(1, ge=0, description="Evaluation fan-out: the (task, mode, document range) units of one "
                                             "evaluation run as shards on a Dask cluster (prefect-dask; "
                                             "router.dask_address), each loading the run once; 1: no fan-out; "
                                             "0: one per worker of the cluster.")
    protocols: tuple[Protocol, ...] = Field(("lm-eval",), description="Evaluation protocols run, each with its "
                                                                      "own results, artifact and table: "
                                                                      "lm-eval (the standard, the default) "
                                                                      "and paper (the `paper:` section).")
    paper: PaperProtocolConfig = Field(default_factory=PaperProtocolConfig, description="The paper protocol's "
                                                                                        "settings.")

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("eval.protocols is empty: list lm-eval, paper or both")
        return tuple(dict.fromkeys(value))

    def limit_for(self, task: str) -> int | None:
        """Items scored for ``task``: ``task_limits[task]``, else ``limit``."""
        return self.task_limits.get(task, self.limit)


class EvalSetup(BaseModel):
    """The sections a run's benchmark evaluation reads (built by ``Profile.eval_setup``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routing: RoutingSetup = Field(..., description="The trained run and its meta-router's section.")
    eval: EvalConfig = Field(..., description="Benchmarks, modes, limits.")
