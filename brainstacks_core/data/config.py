"""The ``data:`` section of a profile, parsed into one frozen pydantic config.

Everything that decides what a prepared dataset contains lives here (sources,
lexicons, margins, eval sets, split), so its hash is the step-config part of every
dataset version. Machine-specific paths (``base_dir``) are excluded from the hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SourceConfig(BaseModel):
    """One source of rows for a domain.

    Attributes:
        kind: ``hf`` (hub dataset, pinned revision), ``local`` (a file) or
            ``generated`` (a deterministic generator of ``synthetic_data``).
        format: Name of the format adapter (see ``formats.ADAPTERS``).
        path: Local file, relative to the repository root (``../shared/data/...``).
        loader: ``datasets`` loader for a local file (json, csv, parquet, text);
            guessed from the extension when omitted.
        repo: Hub repo id (``hf``).
        config: Hub dataset config name (``hf``).
        split: Hub split (``hf``).
        revision: Pinned hub revision, a commit sha (``hf``; required unless ``track``).
        track: Branch of a hub dataset to follow (``hf``): the watcher prepares again
            when the branch's latest commit changes, and preparation reads that commit.
            Without it the pinned ``revision`` never changes.
        generator: Generator name (``generated``), e.g. ``math``.
        rows: Number of rows to generate (``generated``).
        max_rows: Keep only the first ``max_rows`` rows of the source.
        system: A system prompt given to every row of this source.
        mixed: The source may hold rows of other domains (ShareGPT-style chat):
            keyword decontamination moves its rows on ordinary evidence. Rows of a
            single-domain source (the default) are only reported when they look
            foreign, and moved only on overwhelming evidence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf", "local", "generated"] = Field(..., description="hf: hub dataset at a pinned revision; local: a file; generated: a deterministic generator (demo).")
    format: str = Field("alpaca", description="Format adapter: alpaca, sharegpt, gsm8k, pubmedqa, mcq, logiqa, template_text, prompt_response.")
    path: str | None = Field(None, description="Local file, relative to the repository root (../shared/data/...).")
    loader: str | None = Field(None, description="datasets loader for a local file (json, csv, parquet, text); guessed from the extension when omitted.")
    repo: str | None = Field(None, description="Hub dataset repo id (hf).")
    config: str | None = Field(None, description="Hub dataset config name (hf).")
    split: str = Field("train", description="Hub split (hf).")
    revision: str | None = Field(None, description="Pinned hub revision, a commit sha (hf; required there "
                                                   "unless `track` is set).")
    track: str | None = Field(None, description="hf only: a branch to follow (e.g. main). The watch-sources flow "
                                                "checks its latest commit and prepares again when it moves; "
                                                "preparation reads that commit. Unset: the pinned revision.")
    generator: str | None = Field(None, description="Generator name (generated), e.g. math.")
    rows: int = Field(400, ge=1, description="Rows to generate (generated).")
    max_rows: int | None = Field(default=None, ge=1, description="Keep only the first max_rows rows of the source.")
    system: str | None = Field(None, description="A system prompt given to every row of this source.")
    mixed: bool = Field(False, description="true: the source may hold rows of other domains (e.g. ShareGPT-style "
                                           "chat), so keyword decontamination moves them on ordinary evidence "
                                           "(min_score, margin). false (default): a single-domain source; its "
                                           "rows are only reported when they look foreign and moved only on "
                                           "overwhelming evidence (single_domain_min_score).")

    @model_validator(mode="after")
    def _check_kind(self) -> "SourceConfig":
        if self.kind == "hf" and (not self.repo or not (self.revision or self.track)):
            raise ValueError(f"hf source {self.repo!r} needs `repo` and a pinned `revision` (commit sha) "
                             f"or a branch to `track`")
        if self.track is not None and self.kind != "hf":
            raise ValueError(f"`track: {self.track}` is for hf sources only (a {self.kind} source)")
        if self.kind == "local" and not self.path:
            raise ValueError("local source needs `path`")
        if self.kind == "generated" and not self.generator:
            raise ValueError("generated source needs `generator`")
        return self


class PreferenceSourceConfig(BaseModel):
    """A source of preference pairs (prompt, chosen, rejected) for a domain's DPO stage.

    Read, checked against ``data_contracts.preferences`` (bad rows quarantined with their
    reason), versioned and registered by ``brainstacks_core.data.preferences``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "generated"] = Field(..., description="local: a file; generated: deterministic demo "
                                                                 "pairs (generators.py).")
    format: Literal["pairs", "sharegpt_dpo", "hh_rlhf"] = Field("pairs", description=(
        "pairs: rows with prompt, chosen, rejected (+ optional system) strings; sharegpt_dpo: LLaMA-Factory's "
        "conversations[from/value] + chosen/rejected {from, value}; hh_rlhf: Anthropic HH chosen/rejected "
        "transcripts ('\\n\\nHuman:' / '\\n\\nAssistant:' turns; the shared prefix is the prompt)."))
    path: str | None = Field(None, description="local: the file (json, jsonl, jsonl.gz), relative to the "
                                               "repository root.")
    generator: str | None = Field(None, description="generated: the pair generator, e.g. chat_pairs.")
    rows: int = Field(64, ge=1, description="generated: pairs to generate.")
    max_rows: int | None = Field(None, ge=1, description="Keep only the first max_rows rows of the source.")
    max_chars: int = Field(4000, ge=10, description="Longest prompt/chosen/rejected accepted (longer rows are "
                                                    "quarantined).")

    @model_validator(mode="after")
    def _check_kind(self) -> "PreferenceSourceConfig":
        if self.kind == "local" and not self.path:
            raise ValueError("local preference source needs `path`")
        if self.kind == "generated" and not self.generator:
            raise ValueError("generated preference source needs `generator` (e.g. chat_pairs)")
        return self


class EvalSetConfig(BaseModel):
    """A benchmark whose items must not appear in training rows.

    Attributes:
        name: Benchmark name, written into every removal reason.
        path: Local file (relative to the repository root) or None for ``generated``.
        format: Eval format adapter (``gsm8k``, ``mcq``, ``mc_query``, ``generated``).
        generator: Generator name when ``format`` is ``generated``.
        rows: Rows to generate when ``format`` is ``generated``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="Benchmark name, written into every removal reason.")
    path: str | None = Field(None, description="Local file (relative to the repository root); None for generated.")
    format: str = Field("mcq", description="Eval format adapter: gsm8k, mcq, mc_query, generated.")
    generator: str | None = Field(None, description="Generator name when format is generated.")
    rows: int = Field(100, ge=1, description="Rows to generate when format is generated.")


class ClassifierConfig(BaseModel):
    """The decontamination classifier learnt from the labelled (single-domain) sources.

    Attributes:
        enabled: Learn and use it (false: keyword evidence alone, the rule before).
        max_features: Vocabulary size of the TF-IDF (most frequent word n-grams).
        ngram_max: Longest word n-gram.
        min_df: Rows a term must occur in to enter the vocabulary.
        char_ngrams: Lengths of character n-grams added to the words (null: words only).
        fragments: Short views (1-3 sentences or lines) of each training row, trained as its domain.
        char_max_features: Vocabulary size of the character n-grams.
        max_chars: Characters of the prompt, and of the response, the classifier reads.
        train_rows_per_domain: Training rows per domain (hash order; the rest unused).
        calibration_fraction: Share of the labelled rows (by hash) held out for calibration.
        calibration_rows_per_domain: Cap on held-out rows per domain.
        max_false_move_rate: Calibration target: the threshold is the lowest probability at
            which at most this share of held-out single-domain rows goes to another domain.
        threshold: A fixed threshold instead of the calibrated one (the calibrated one is
            still computed and recorded).
        folds: Cross-fitting folds for the rows of mixed sources.
        clean_rounds: Rounds of label cleaning of the mixed rows (out-of-fold foreign rows left out, refit).
        keyword_free_probability: Probability at which a classifier move needs no keyword of its target.
        keyword_target: Below that, a row the classifier calls foreign moves to the one foreign domain
            its keywords name (when they name exactly one, beating the own domain).
        C: Inverse regularisation strength of the logistic regression.
        max_iter: Iterations of the logistic regression solver.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Learn a TF-IDF + logistic-regression domain classifier from the "
                                            "rows of single-domain sources and let it move rows of mixed sources "
                                            "(false: keyword evidence alone).")
    max_features: int = Field(20_000, ge=100, description="TF-IDF vocabulary size (most frequent word 1..ngram_max "
                                                          "-grams; digits folded to 0, punctuation kept).")
    ngram_max: int = Field(1, ge=1, le=3, description="Longest word n-gram of the TF-IDF (2: +1.5 points of "
                           "held-out recall on the shared data for ~3x the fit time).")
    min_df: int = Field(2, ge=1, description="Rows a term must occur in to enter the vocabulary.")
    char_ngrams: tuple[int, int] | None = Field(None, description="Also character n-grams within word boundaries "
                                                "(``char_wb``) of these lengths, e.g. [2, 4] (null: words only).")
    fragments: int = Field(1, ge=0, le=4, description="Short views (1-3 consecutive sentences or lines) of each "
                           "training row added as training examples of its domain (0: whole rows only).")
    char_max_features: int = Field(30_000, ge=100, description="Vocabulary size of the character n-grams.")
    max_chars: int = Field(500, ge=50, description="Characters of the prompt, and of the response, the "
                                                    "classifier reads (bounds its cost on long rows).")
    train_rows_per_domain: int = Field(700, ge=10, description="Training rows per domain (hash order; a cap keeps "
                                       "classes balanced and the fit cheap).")
    calibration_fraction: float = Field(0.2, gt=0.0, lt=0.9, description="Share of the labelled rows (by hash) "
                                        "held out, never trained on, to calibrate the threshold.")
    calibration_rows_per_domain: int = Field(300, ge=10, description="Cap on held-out calibration rows per domain.")
    max_false_move_rate: float = Field(0.01, ge=0.0, lt=1.0, description="Calibration target: the threshold is "
                                       "the lowest probability at which at most this share of held-out "
                                       "single-domain rows would be assigned to another domain.")
    threshold: float | None = Field(None, gt=0.0, lt=1.0, description="A fixed probability threshold instead of "
                                    "the calibrated one (null: calibrated; both are recorded).")
    folds: int = Field(2, ge=2, le=10, description="Cross-fitting folds: a mixed-source row is scored by a model "
                                                   "that never trained on it.")
    clean_rounds: int = Field(1, ge=0, le=3, description="Rounds of label cleaning: rows of mixed sources that "
                              "their out-of-fold model assigns to another domain stop training their own "
                              "domain, then the models are fitted again (0: none).")
    keyword_free_probability: float = Field(0.9, gt=0.0, le=1.0, description="Probability at which the "
                                            "classifier moves a row of a mixed source with no keyword of the target "
                                            "domain (below it, and above the threshold, one target keyword is needed).")
    keyword_target: bool = Field(True, description="A row of a mixed source that the classifier puts in a "
                                 "foreign domain without one keyword of it (p < keyword_free_probability) moves "
                                 "instead to the one foreign domain whose keywords beat every other, own included.")
    C: float = Field(4.0, gt=0.0, description="Inverse L2 regularisation strength of the logistic regression.")
    max_iter: int = Field(300, ge=10, description="Iterations of the logistic-regression solver (lbfgs).")


class DataConfig(BaseModel):
    """Everything the data step needs; the hash of it is part of each version.

    Attributes:
        domains: Domains in curriculum order.
        sources: Sources per domain.
        lexicons: Keyword lexicon per domain (may name domains outside the run:
            rows that belong there are dropped). Entries are whole words or
            phrases, matched case-insensitively; an entry written ``=word`` matches
            that exact case only (``=class`` is Python's keyword, not "Class").
        margin: A foreign domain must beat the row's own score by this many
            distinct keywords (a repeated word is one signal).
        min_score: Distinct foreign keywords before a row of a ``mixed`` source moves.
        single_domain_min_score: Distinct foreign keywords before a row of a
            single-domain source moves (below it, a foreign-looking row is reported).
        classifier: The decontamination classifier (``ClassifierConfig``).
        eval_sets: Benchmarks for 13-gram decontamination.
        ngram: n of the benchmark n-gram overlap check.
        template_min_items: An n-gram found in this many items of one benchmark,
            or in this many distinct training rows of a domain, is template
            boilerplate (a question stem), not contamination.
        val_fraction: Share of rows (by hash) for validation (early stopping).
        test_fraction: Share of rows (by hash) for the test split (reported numbers).
        router_fraction: Share of rows (by hash) held out for the routing oracle
            and the meta-router.
        max_rows_per_domain: Cap after de-duplication (hash order; the rest dropped).
        max_chars: Longest prompt/response/system accepted (longer rows quarantined).
        seed: Seed of the split and the generators.
        base_dir: Folder that relative source paths are resolved against.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(..., min_length=1, description="Domains in curriculum order (paper 3.4).")
    sources: dict[str, list[SourceConfig]] = Field(..., description="Sources per domain.")
    lexicons: dict[str, list[str]] = Field(default_factory=dict, description="Keyword lexicon per domain; may name "
                                           "domains outside the run (rows that belong there are dropped). Whole "
                                           "words or phrases, case-insensitive; '=word' matches that exact case "
                                           "only (e.g. '=class' for Python's keyword, not 'Class' or 'CLASS').")
    margin: int = Field(default=3, ge=1, description="A foreign domain must beat the row's own score by this many "
                                                     "distinct keywords (a repeated word is one signal).")
    min_score: int = Field(default=3, ge=1, description="Distinct foreign keywords before a row of a mixed source "
                                                        "moves (or is dropped for a domain outside the run).")
    single_domain_min_score: int = Field(default=8, ge=1, description="Distinct foreign keywords before a row of "
                                         "a single-domain source (mixed: false) moves; below it, a row that looks "
                                         "foreign (>= min_score) is only reported (flagged) and kept.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="The decontamination "
                                         "classifier learnt from the single-domain sources (TF-IDF + logistic "
                                         "regression), its calibration and settings.")
    eval_sets: list[EvalSetConfig] = Field(default_factory=list, description="Benchmarks for n-gram "
                                                                             "decontamination.")
    ngram: int = Field(default=13, ge=3, description="n of the benchmark n-gram overlap check.")
    template_min_items: int = Field(default=3, ge=2, description="An n-gram found in at least this many items of "
                                    "one benchmark, or in this many distinct training rows of a domain, is template "
                                    "boilerplate (a shared question stem) and is ignored; a real near-duplicate "
                                    "shares n-grams with one item.")
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="Share of rows (by hash) for the val "
                                                                          "split: early stopping, best-stack choice.")
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="Share of rows (by hash) for the test "
                                 "split: the numbers a report shows; never used for training decisions.")
    router_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="Share of rows (by hash) held out for "
                                   "the routing oracle and the meta-router (not trained on, not reported).")
    max_rows_per_domain: int | None = Field(default=None, ge=1, description="Cap after de-duplication (hash "
                                                                            "order; the rest dropped).")
    max_chars: int = Field(default=100_000, ge=100, description="Longest prompt/response/system accepted "
                                                                "(longer rows quarantined).")
    seed: int = Field(0, description="Seed of the split and the generators (default: the profile seed).")
    base_dir: Path = Field(default=Path("."), exclude=True, description="Folder relative source paths resolve "
                                                                        "against (set by load_profile).")

    @model_validator(mode="after")
    def _check_domains(self) -> "DataConfig":
        missing = [d for d in self.domains if not self.sources.get(d)]
        if missing:
            raise ValueError(f"domains without sources: {missing}")
        extra = sorted(set(self.sources) - set(self.domains))
        if extra:
            raise ValueError(f"sources for domains not listed in `domains`: {extra}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"duplicate domains: {self.domains}")
        held_out = self.val_fraction + self.test_fraction + self.router_fraction
        if held_out >= 0.9:
            raise ValueError(f"val_fraction + test_fraction + router_fraction = {held_out:.2f}: leaves under 10% "
                             f"of the rows for training")
        return self

    def resolve(self, path: str) -> Path:
        """A source path made absolute against ``base_dir``."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p).resolve()
