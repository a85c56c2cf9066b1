"""``brainstacks`` command line: thin commands over the flows and the catalog.

Each sub-command imports its flow lazily (transformers and trl take seconds to
import), so ``brainstacks --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

DEFAULT_PROFILE = "configs/demo.yaml"

# sub-command -> (module:function, help). Each function takes the parsed args.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("flows.prepare_data:cli_prepare", "download, clean, decontaminate, validate and split domain data"),
    "train": ("flows.continual_training:cli_train", "train one domain (its boosting rounds) or all domains in order"),
    "run": ("flows.pipeline:cli_run", "the whole pipeline on a profile: prepare, base, continual training, report"),
    "train-router": ("flows.train_router:cli_train_router", "oracle discovery, meta-router training and routed "
                                                            "evaluation of a trained run"),
    "generate": ("flows.generate:cli_generate", "routed answer from a trained run: routing weights, the stacks "
                                                "loaded, the streamed answer, the stack store's hits and misses"),
    "eval": ("flows.evaluate:cli_eval", "benchmark evaluation of a trained run on lm-evaluation-harness: base, "
                                        "ungated and routed modes, cached per request"),
    "audit": ("flows.audit:cli_audit", "lineage: which data went into an artifact, which artifacts hold a record"),
    "plan": ("flows.maintenance:cli_plan", "what a training run would retrain and why (which version changed)"),
    "repair": ("flows.maintenance:cli_repair", "re-verify a run folder, drop a broken round and what follows, "
                                               "resume"),
    "watch": ("flows.watch:cli_watch", "check the profile's sources (stat, sha256, tracked hub branch) and "
                                       "prepare only the changed domains"),
    "catalog": ("flows.maintenance:cli_catalog", "catalog upkeep: prune cached evaluation scores of models no "
                                                 "current run uses (catalog prune [--dry-run]); copy the DuckDB "
                                                 "catalog into PostgreSQL (catalog migrate; --store-to s3://... "
                                                 "also moves the local store's files into an object store)"),
    "config": ("flows.config:cli_config", "validate a profile (config check PATH) or print its JSON Schema "
                                          "(config schema)"),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_PROFILE, help=f"profile YAML (default: {DEFAULT_PROFILE})")
    p.add_argument("--artifact-root", default=None, help="override the profile's artifact_root")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _add_eval(sub) -> None:
    from brainstacks_core.evaluation.suite import GROUPS, available

    p = sub.add_parser("eval", help=COMMANDS["eval"][1], description=COMMANDS["eval"][1],
                       epilog=f"Tasks: {', '.join(available())}; groups: {', '.join(GROUPS)}. Example: "
                              "brainstacks eval --config configs/demo.yaml --mode base,routed --tasks demo --limit 20; "
                              "brainstacks eval --config configs/demo.yaml --protocol paper")
    _add_common(p)
    p.add_argument("--run", default="main", help="run name under <store>/training (default: main)")
    p.add_argument("--mode", default=None, help="comma-separated modes: base (no stacks), ungated (every stack), "
                                                "routed (the run's meta-router) (default: the profile's eval.modes)")
    p.add_argument("--tasks", default=None, help="comma-separated task names or groups (default: the profile's "
                                                 "eval.tasks)")
    p.add_argument("--limit", type=_positive, default=None, help="items per task, the first N (default: the "
                                                                 "profile's eval.limit / eval.task_limits)")
    p.add_argument("--protocol", default=None, help="comma-separated evaluation protocols, each with its own "
                                                    "results and table: lm-eval (the harness's scoring) and "
                                                    "paper (mean per-token log-prob, zero-shot Alpaca GSM8K, "
                                                    "the profile's eval.paper n and max length) (default: the "
                                                    "profile's eval.protocols)")
    esub = p.add_subparsers(dest="eval_command", required=False, metavar="ACTION")
    x = esub.add_parser("export-tasks", help="write standalone task YAMLs and their data files for lm-eval's own "
                                             "CLI (lm_eval --include_path DIR)",
                        description="Writes DIR/<task>.yaml for every task of the profile's eval.tasks (or "
                                    "--tasks) and the documents to DIR/data/, with absolute data_files paths: "
                                    "what brainstacks eval scores, for lm_eval --include_path DIR.",
                        epilog="Example: brainstacks eval export-tasks /tmp/tasks --config configs/demo.yaml; "
                               "lm_eval --model hf --model_args pretrained=artifacts/demo/base/<...> "
                               "--include_path /tmp/tasks --tasks demo_math --limit 5")
    x.add_argument("dir", help="output folder (created)")
    # SUPPRESS: an option given before the action (brainstacks eval --config P export-tasks DIR) stays
    x.add_argument("--config", default=argparse.SUPPRESS, help=f"profile YAML (default: {DEFAULT_PROFILE})")
    x.add_argument("--artifact-root", default=argparse.SUPPRESS, help="override the profile's artifact_root")
    x.add_argument("--tasks", default=argparse.SUPPRESS, help="comma-separated task names or groups (default: "
                                                              "the profile's eval.tasks)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="brainstacks",
        description="Continual domain fine-tuning as frozen MoE-LoRA stacks, with lineage.",
        epilog="Example: brainstacks run --config configs/demo.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help=COMMANDS["prepare"][1], description=COMMANDS["prepare"][1])
    _add_common(p)
    p.add_argument("--domain", default=None, help="one domain (default: every domain of the profile)")
    p = sub.add_parser("train", help=COMMANDS["train"][1], description=COMMANDS["train"][1])
    _add_common(p)
    p.add_argument("--domain", default=None, help="one domain (default: all, in curriculum order)")
    p = sub.add_parser("run", help=COMMANDS["run"][1], description=COMMANDS["run"][1])
    _add_common(p)
    p = sub.add_parser("train-router", help=COMMANDS["train-router"][1], description=COMMANDS["train-router"][1],
                       epilog="Example: brainstacks train-router --config configs/demo.yaml")
    _add_common(p)
    p.add_argument("--run", default="main", help="run name under <store>/training (default: main)")
    p = sub.add_parser("generate", help=COMMANDS["generate"][1], description=COMMANDS["generate"][1],
                       epilog="Example: brainstacks generate --config configs/demo.yaml --prompt 'What is 7 * 6?'")
    _add_common(p)
    importlib.import_module("flows.generate").add_arguments(p)  # light module: heavy imports are in the command
    _add_eval(sub)
    p = sub.add_parser("audit", help=COMMANDS["audit"][1], description=COMMANDS["audit"][1])
    _add_common(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--artifact", help="URI or version of an artifact: list everything upstream of it")
    g.add_argument("--record", help="a record_id: list every artifact that contains it")
    g.add_argument("--list", action="store_true", help="list every artifact in the catalog")
    p.add_argument("--current", action="store_true", help="hide versions superseded by a newer one of the same URI")
    for name in ("plan", "repair"):
        p = sub.add_parser(name, help=COMMANDS[name][1], description=COMMANDS[name][1])
        _add_common(p)
        p.add_argument("--run", default="main", help="run name under <store>/training (default: main)")
    p.add_argument("--no-resume", action="store_true", help="repair only; do not resume training")
    p = sub.add_parser("watch", help=COMMANDS["watch"][1], description=COMMANDS["watch"][1])
    _add_common(p)
    p.add_argument("--dry-run", action="store_true", help="only report what changed")
    p = sub.add_parser("catalog", help=COMMANDS["catalog"][1], description=COMMANDS["catalog"][1],
                       epilog="Example: brainstacks catalog prune --config configs/demo.yaml --dry-run")
    csub = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    c = csub.add_parser("prune", help="delete the eval_scores rows of effective models that depend on a base, "
                                      "stack or router version no current run uses; prints counts",
                        description="Keeps every cached request result whose model is made only of versions the "
                                    "profile's current runs use (their base, the frozen stacks of the folder each "
                                    "run's current.json names, each run's latest router); deletes the rest.")
    _add_common(c)
    c.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    c.add_argument("--drop-unattributed", action="store_true",
                   help="also delete rows written before model identities were recorded")
    c = csub.add_parser("migrate", help="copy the profile's DuckDB catalog into a PostgreSQL catalog; idempotent "
                                        "(a second run adds nothing); prints rows per table",
                        description="Copies every table of <store>/catalog.duckdb into the PostgreSQL catalog in "
                                    "one transaction, adding only rows it does not hold yet.",
                        epilog="Example: BRAINSTACKS_CATALOG_URL=postgresql://bs@db:5432/brainstacks "
                               "brainstacks catalog migrate --config configs/demo.yaml (prefer the variable, or "
                               "PGPASSWORD, to a password on the command line); with the store: brainstacks catalog "
                               "migrate --config configs/demo.yaml --to postgresql://... --store-to s3://bucket/bs")
    _add_common(c)
    c.add_argument("--to", metavar="URL", default=None,
                   help="postgresql://user@host:port/db (default: $BRAINSTACKS_CATALOG_URL, else "
                        "lineage.catalog_url)")
    c.add_argument("--from", dest="source", metavar="PATH", default=None,
                   help="the DuckDB file to copy (default: <store>/catalog.duckdb)")
    c.add_argument("--store-to", metavar="URL", default=None,
                   help="also move the local store into this object store (s3://bucket/prefix, gs://..., "
                        "file://...): every file a row names is published as a blob or tree, the rows name "
                        "blob URIs, then the dataset, training and routing pointers are written; the local "
                        "folder and catalog.duckdb are left as they were")
    p = sub.add_parser("config", help=COMMANDS["config"][1], description=COMMANDS["config"][1],
                       epilog="Example: brainstacks config check configs/demo.yaml")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate every key of a profile and print the resolved profile "
                                      "(defaults filled in)")
    c.add_argument("path", help="profile YAML, e.g. configs/demo.yaml")
    c.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    csub.add_parser("schema", help="print the JSON Schema of a profile file (descriptions, defaults, types)")
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int | None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brainstacks`` console script."""
    from brainstacks_core.lineage.backends import CatalogUnavailableError
    from brainstacks_core.lineage.blob_store import BlobIntegrityError, StoreUnreachableError
    from brainstacks_core.profile import ProfileError

    args = build_parser().parse_args(argv)
    try:
        code = _resolve(COMMANDS[args.command][0])(args)
    except ProfileError as exc:  # names file and key already: no traceback
        print(f"brainstacks: invalid profile\n{exc}", file=sys.stderr)
        return 2
    except (CatalogUnavailableError, StoreUnreachableError, BlobIntegrityError) as exc:  # names the URL and
        print(f"brainstacks: {exc}", file=sys.stderr)  # the setting (or the repair command): no traceback
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
