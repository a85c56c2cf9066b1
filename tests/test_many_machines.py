"""Many machines, end to end (issue 20 item 5): a REAL Prefect server, two process workers on a ``gpu``
pool, each in its own empty folder with its own blob cache, sharing nothing but an S3 endpoint (moto's
server) and a PostgreSQL catalog (pgserver).

1. ``brainstacks prepare`` from a third folder (host C) writes the prepared data to S3 and the catalog;
2. worker A (host A) runs the ``continual-training`` deployment and is stopped; worker B (host B), with
   an empty cache, runs ``train-router`` and ``evaluate``: it can only have the stacks from S3;
3. ``brainstacks audit`` from a fourth folder (host D) names every stack, the oracle (with its row
   count), the router and the evaluation with their data versions;
4. the same profile run on one machine (a local folder, the DuckDB catalog) gives router targets and
   an evaluation ``results.json`` with the same sha256 as the many-machine run's catalog rows.

No host folder is written by the workers outside their own cache (checked), and the S3 secret key is
in no output. Slow on purpose (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from s3_server import S3Server
from test_prefect_server import PREFECT, ROOT, free_port, server_env, start_server, stop, wait_for, write_profile

POOL = "gpu-e2e"
BRAINSTACKS = str(Path(sys.executable).parent / "brainstacks")


def _deployments(tmp: Path, profile: Path) -> Path:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    spec["deployments"] = [
        {"name": name, "entrypoint": entry, "work_pool": {"name": POOL}, "enforce_parameter_schema": False,
         "parameters": {"config_path": str(profile), "run_name": "main"}}
        for name, entry in (("train-e2e", "flows/continual_training.py:continual_training"),
                            ("router-e2e", "flows/train_router.py:train_router"),
                            ("eval-e2e", "flows/evaluate.py:evaluate"))]
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _host(tmp: Path, name: str, env: dict) -> tuple[Path, dict]:
    """An empty folder for one host and its environment (its own blob cache)."""
    home = tmp / name
    (home / "cache").mkdir(parents=True)
    return home, {**env, "BRAINSTACKS_CACHE_DIR": str(home / "cache")}


@pytest.mark.slow
def test_two_gpu_workers_share_only_s3_and_postgres(tmp_path, pg_server):
    s3 = S3Server().start()
    server = worker = None
    try:
        url = s3.make_bucket("bs-e2e") + "/store"
        profile = write_profile(tmp_path)
        raw = yaml.safe_load(profile.read_text())
        raw["artifact_root"] = url
        raw["eval"]["modes"] = ["base", "routed"]
        profile.write_text(yaml.safe_dump(raw))
        port = free_port()
        base_env = {**server_env(tmp_path, port), **s3.env, "BRAINSTACKS_CATALOG_URL": pg_server.url}
        api = base_env["PREFECT_API_URL"]
        cli = lambda *a: subprocess.run([PREFECT, *a], env=base_env, cwd=ROOT, capture_output=True,  # noqa: E731
                                        text=True, timeout=120)
        server = start_server(base_env, port, tmp_path / "server.log")
        assert cli("work-pool", "create", POOL, "--type", "process").returncode == 0
        deployments = _deployments(tmp_path, profile)
        r = cli("--no-prompt", "deploy", "--all", "--prefect-file", str(deployments))
        assert r.returncode == 0, r.stdout + r.stderr
        ids = {d["name"]: d["id"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
        outputs = []

        def run(cmd: list[str], home: Path, env: dict) -> subprocess.CompletedProcess:
            res = subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True, timeout=600)
            outputs.append(res.stdout + res.stderr)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            return res

        def on_worker(name: str, deployment: str, flow: str) -> None:
            nonlocal worker
            stop(worker, grace=10)  # one worker at a time: the run must land on THIS host
            home, env = _host(tmp_path, name, base_env)
            log = home / "worker.log"
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL], env=env, cwd=home,
                                      stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
            r = cli("deployment", "run", f"{flow}/{deployment}")
            assert r.returncode == 0, r.stdout + r.stderr
            runs = wait_for(api, ids[deployment], 1, 500)
            outputs.append(log.read_text())
            assert [x["state"]["type"] for x in runs] == ["COMPLETED"], log.read_text()[-4000:]

        # 1. host C prepares
        host_c, env_c = _host(tmp_path, "host-c", base_env)
        run([BRAINSTACKS, "prepare", "--config", str(profile)], host_c, env_c)
        # 2. worker A trains, then goes away; worker B (empty cache) routes and evaluates
        on_worker("host-a", "train-e2e", "continual-training")
        on_worker("host-b", "router-e2e", "train-router")
        on_worker("host-b2", "eval-e2e", "evaluate")  # another fresh worker folder and cache
        stop(worker, grace=10)
        worker = None
        assert not (ROOT / "artifacts" / "srv").exists()  # nothing went to the checkout's artifacts/
        for name in ("host-a", "host-b", "host-b2"):  # each worker wrote only its cache (and its log)
            assert {p.name for p in (tmp_path / name).iterdir()} == {"cache", "worker.log"}
            assert any((tmp_path / name / "cache").iterdir()), name  # ... and did work there

        # 3. host D audits: every stack, the oracle with its rows, the router, the evaluation, data versions
        host_d, env_d = _host(tmp_path, "host-d", base_env)
        listing = run([BRAINSTACKS, "audit", "--config", str(profile), "--list", "--current"], host_d, env_d).stdout
        for uri in ("stack://srv/main/chat/r1", "stack://srv/main/code/r1", "stack://srv/main/math/r1",
                    "oracle://srv/main", "router://srv/main", "eval://srv/main", "dataset://srv/math/train"):
            assert uri in listing, listing
        up = run([BRAINSTACKS, "audit", "--config", str(profile), "--artifact", "eval://srv/main"], host_d,
                 env_d).stdout
        for uri in ("router://srv/main", "oracle://srv/main", "stack://srv/main/math/r1", "dataset://srv/code/train"):
            assert uri in up, up

        from brainstacks_core.lineage.catalog import Catalog
        from brainstacks_core.profile import load_profile

        from pydantic import SecretStr

        remote = Catalog.for_context(load_profile(profile).context.model_copy(
            update={"catalog_url": SecretStr(pg_server.url)}))
        oracle = remote.latest("oracle://srv/main")
        assert oracle["metadata"]["pairs"] > 0 and oracle["path"].startswith("s3://")
        rows = remote._query("select count(*), count(distinct key) from oracle_losses")[0]
        assert rows[0] == rows[1] > 0  # oracle rows, no duplicate key

        # 4. the same profile on one machine: the same router targets and results.json
        local_env = {k: v for k, v in base_env.items() if k != "BRAINSTACKS_CATALOG_URL"}
        one = tmp_path / "one-machine"
        one.mkdir()
        for stage in ("prepare", "train", "train-router", "eval"):
            run([BRAINSTACKS, stage, "--config", str(profile), "--artifact-root", str(one / "art")], one, local_env)
        local = Catalog(one / "art" / "srv" / "catalog.duckdb")
        for uri in ("oracle://srv/main", "router://srv/main", "eval://srv/main"):  # targets, router, results.json
            assert local.latest(uri)["sha256"] == remote.latest(uri)["sha256"], uri
        secret_in = [i for i, o in enumerate(outputs) if s3.secret in o]
        assert not secret_in, secret_in
    finally:
        stop(worker)
        stop(server)
        s3.stop()
