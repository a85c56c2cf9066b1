"""``brainstacks plan`` (what a run would retrain, and why), ``brainstacks repair`` (fix a run folder) and
``brainstacks catalog prune`` (drop cached evaluation scores of models no current run uses)."""

from __future__ import annotations

import argparse
import sys

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile


def cli_plan(args: argparse.Namespace) -> int:
    """``brainstacks plan --config PATH [--run NAME]``: one line per domain (reuse / train and why)."""
    from brainstacks_core.training.plan import format_plan, plan_run

    profile = load_profile(args.config, args.artifact_root)
    try:
        rows = plan_run(profile.training_setup, args.run, Catalog.for_context(profile.context))
    except LookupError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    print(f"# run {profile.name}/{args.run}: {sum(r['action'] == 'train' for r in rows)} of {len(rows)} domains "
          f"would train")
    print(format_plan(rows))
    return 0


def cli_repair(args: argparse.Namespace) -> int:
    """``brainstacks repair --config PATH [--run NAME] [--no-resume]``.

    Under the run's lock: re-verify every frozen stack file of the run's current
    folder against its manifest, drop the first broken round and everything trained
    after it; then (unless ``--no-resume``) resume training, which retrains only what
    was dropped.
    """
    from brainstacks_core.training.published_run import materialise_run, publish_run
    from brainstacks_core.training.repair import repair_run
    from brainstacks_core.training.run import current_run_dir
    from brainstacks_core.training.run_lock import run_lock

    profile = load_profile(args.config, args.artifact_root)
    ctx = profile.context
    materialise_run(ctx, args.run, tolerant=True)  # an object store: a corrupt blob is left out, then dropped
    folder = current_run_dir(ctx, args.run, fetch=False)
    with run_lock(folder.parent, "wait", what=f"run {profile.name}/{args.run}",
                  catalog=Catalog.for_context(ctx), key=f"training/{args.run}"):
        report = repair_run(folder)
        if publish_run(ctx, args.run, force=True):  # the verified files replace any corrupt object
            print(f"re-published run {args.run} to {ctx.remote.url}")
    if report["broken"] is None:
        print(f"{folder}: every stack file matches the manifest; nothing to repair")
    else:
        dom, rnd, problem = report["broken"]
        print(f"{folder}: {problem}\n  dropped {dom} round {rnd} and everything after it: "
              f"{', '.join(report['dropped'])}")
    if args.no_resume:
        return 0
    from flows.continual_training import continual_training

    print(f"resuming run {args.run} ...")
    continual_training(config_path=args.config, run_name=args.run, artifact_root=args.artifact_root)
    print("resumed: the run is consistent and complete")
    return 0


def cli_catalog(args: argparse.Namespace) -> int:
    """``brainstacks catalog prune --config PATH [--dry-run] [--drop-unattributed]``: counts, then deletes;
    ``brainstacks catalog migrate --config PATH [--to URL] [--from FILE]``: DuckDB file -> PostgreSQL."""
    from brainstacks_core.evaluation.retention import format_prune, prune_eval_cache

    profile = load_profile(args.config, args.artifact_root)
    if getattr(args, "catalog_command", "prune") == "migrate":
        return _migrate(profile, args)
    cat = Catalog.for_context(profile.context)
    if not cat.exists():
        print(f"{cat.location}: no catalog yet; nothing to prune")
        return 0
    out = prune_eval_cache(profile.context, profile.base, cat, dry_run=args.dry_run,
                           drop_unattributed=args.drop_unattributed)
    print(f"# catalog {cat.location}")
    print(format_prune(out))
    return 0


def _migrate(profile, args: argparse.Namespace) -> int:
    from brainstacks_core.lineage.migrate import format_migration, migrate_catalog
    from brainstacks_core.lineage.pg_backend import schema_name

    url = args.to or (profile.catalog_url.get_secret_value() if profile.catalog_url else None)
    if not url:
        print("catalog migrate: no target: pass --to postgresql://... or set $BRAINSTACKS_CATALOG_URL "
              "(or lineage.catalog_url)", file=sys.stderr)
        return 2
    if getattr(args, "store_to", None):
        return _migrate_store(profile, args, url)
    source = args.source or profile.catalog_path
    target = Catalog(profile.catalog_path, url=url, pg_schema=schema_name(profile.name))
    try:
        report = migrate_catalog(source, target)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"# {source} -> {target.location}")
    print(format_migration(report))
    return 0


def _migrate_store(profile, args: argparse.Namespace, url: str) -> int:
    """``catalog migrate --store-to URL``: the local store's files, rows and pointers into the URL store."""
    from pydantic import SecretStr

    from brainstacks_core.lineage.blob_store import StoreUnreachableError
    from brainstacks_core.lineage.migrate import format_migration
    from brainstacks_core.store_migration import migrate_store

    if args.source:
        print("catalog migrate: --from and --store-to do not go together: --store-to moves <store>/catalog.duckdb "
              "with the store it describes", file=sys.stderr)
        return 2
    target = load_profile(args.config, args.store_to).context.model_copy(update={"catalog_url": SecretStr(url)})
    try:
        report = migrate_store(profile.context, target)
    except (FileNotFoundError, ValueError, StoreUnreachableError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"# {profile.store} -> {report['url']}; {profile.catalog_path} -> {Catalog.for_context(target).location}")
    print(format_migration(report["tables"]))
    for kind, names in report["pointers"].items():
        print(f"pointers {kind}: {', '.join(names) or '-'}")
    for line in report["missing"]:
        print(f"gone (row kept without a path): {line}")
    print(f"next: set artifact_root: {report['url']} (and the catalog URL) in {args.config}")
    return 0
