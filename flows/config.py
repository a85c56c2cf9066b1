"""``brainstacks config check PATH`` and ``brainstacks config schema``."""

from __future__ import annotations

import argparse
import json

import yaml

from brainstacks_core.profile import load_profile, profile_schema


def cli_config(args: argparse.Namespace) -> int:
    """Validate a profile and print it resolved, or print the profile JSON Schema."""
    if args.config_command == "schema":
        print(json.dumps(profile_schema(), indent=2))
        return 0
    profile = load_profile(args.path)
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
