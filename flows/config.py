"""``brainstacks config check PATH`` and ``brainstacks config schema``."""

from __future__ import annotations

import argparse
import json

import yaml

from brainstacks_core.profile import ProfileError, load_profile, profile_schema


def cli_config(args: argparse.Namespace) -> int:
    """Validate a profile and print it resolved, or print the profile JSON Schema."""
    if args.config_command == "schema":
        print(json.dumps(profile_schema(), indent=2))
        return 0
    profile = load_profile(args.path)
    _check_eval_names(profile, args.path)
    resolved = profile.model_dump(mode="json", exclude={"source_path"})
    resolved["data"].pop("base_dir", None)
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        print(f"# {args.path}: valid (every key checked; defaults filled in)")
        print(yaml.safe_dump(resolved, sort_keys=False, width=120), end="")
    hub = profile.base.hub
    if profile.base.kind == "hub" and hub is not None and hub.revision is None:
        print(f"# note: base.hub.revision is not set: data preparation works, training refuses until {hub.repo_id} "
              "is pinned to a commit sha")
    return 0


def _check_eval_names(profile, path) -> None:
    """An unknown ``eval.tasks`` / ``eval.modes`` name fails the check, naming the file and the key.

    Kept out of ``EvalConfig`` itself: resolving task names reads the task registry, which must not
    enter the data path's versioned import graph (tests/test_versioning.py); ``brainstacks run``
    checks the same names before it prepares anything.
    """
    from brainstacks_core.evaluation.suite import check_request

    try:
        check_request(profile.eval.modes, profile.eval.tasks)
    except ValueError as exc:
        key = "eval.modes" if str(exc).startswith("unknown eval mode") else "eval.tasks"
        raise ProfileError(f"{path}: {key}: {exc}") from None
