"""A REAL Prefect server, work pool, deployments and worker: data change -> exactly one retraining, then router
and evaluation brought up to date; the pipeline's own preparation starts no retraining; schedules create runs.

Slow on purpose (marked ``slow``, about 2-3 minutes on 2 CPU cores): it starts
``prefect server start`` on a free port of 127.0.0.1 (PREFECT_HOME in a temp dir,
PREFECT_API_URL set, analytics off), creates a process pool, deploys the
``prepare-demo`` and ``retrain-demo-on-data-change`` blocks of the repository's
prefect.yaml re-pointed at a tiny three-domain profile (``prefect --no-prompt deploy``
with a wrong ``BRAINSTACKS_HOME``: the pull step must read the worker's), starts a worker and runs
the prepare deployment twice:

1. the whole pipeline (deployment ``pipeline-srv``) on a fresh store: it prepares, trains, routes and
   evaluates, and its preparation emits no data-changed event, so NO retraining run starts and
   every model card is published once;
2. one record of the middle domain (code) edited -> ``prepare-srv`` -> ONE retraining run, which
   trains code and math (after it), reuses chat's stack files, then (``downstream``) retrains the
   router and re-scores the evaluation as subflows: ``brainstacks generate`` works right after;
3. ``watch-srv`` deployed with a 3 s interval schedule: the server's scheduler (SQLAlchemy < 2.1)
   creates runs by itself and the worker completes one.

Rounds are counted from the run manifests. Everything started is stopped (worker by
SIGINT, then its process group; server killed) even when an assertion fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "srv-cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path, port: int) -> dict[str, str]:
    """Environment of every process of the test: its own PREFECT_HOME, API URL, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", BRAINSTACKS_HOME=str(ROOT),
               PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    return env


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``prefect server start`` in its own process group; returns once /api/health answers."""
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"prefect server not healthy after 90 s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Signal a process started in its own session, then kill its whole group if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def write_profile(tmp: Path) -> Path:
    """Tiny three-domain profile (chat generated; code and math local files), one round per domain."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(name="srv", artifact_root=str(tmp / "art"))
    code = [{"instruction": f"Write a python function f{i} that will return {i}",
             "output": f"def f{i}():\n    return {i}"} for i in range(60)]
    math = [{"instruction": f"What is {i} plus {i + 1}?", "output": f"{i} plus {i + 1} is {2 * i + 1}."}
            for i in range(60)]
    (tmp / "code.json").write_text(json.dumps(code))
    (tmp / "math.json").write_text(json.dumps(math))
    raw["data"].update(domains=["chat", "code", "math"], max_rows_per_domain=60, eval_sets=[], sources={
        "chat": [{"kind": "generated", "generator": "chat", "rows": 60}],
        "code": [{"kind": "local", "format": "alpaca", "path": str(tmp / "code.json")}],
        "math": [{"kind": "local", "format": "alpaca", "path": str(tmp / "math.json")}]})
    raw["base"]["tiny"].update(vocab_size=512, hidden_size=32, intermediate_size=64, pretrain_steps=5,
                               pretrain_batch_size=4, seq_len=64)
    raw["moe"].update(rank=4)
    raw["training"].update(max_rounds=1, basis={"k": 4}, eval_rows=8, null_space_val_rows=8, ablation=False,
                           sft={"max_steps": 3, "eval_steps": 3, "batch_size": 8, "learning_rate": 0.01,
                                "warmup_steps": 0, "max_length": 64})
    raw.pop("experiment1", None)
    raw["router"].update(epochs=3, soft_boost={})
    raw["eval"].update(limit=4, task_limits={"demo_gsm8k": 2}, demo_items=8)
    path = tmp / "srv.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_deployments(tmp: Path, profile: Path) -> Path:
    """The repository's prepare-demo and retrain-demo-on-data-change blocks, re-pointed at the test profile."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    out = []
    for name, new in (("prepare-demo", "prepare-srv"), ("retrain-demo-on-data-change", "retrain-srv"),
                      ("demo", "pipeline-srv"), ("watch-demo", "watch-srv")):
        d = json.loads(json.dumps(deps[name]))
        d.update(name=new, work_pool={"name": POOL}, enforce_parameter_schema=False)  # a path outside configs/
        d["parameters"]["config_path"] = str(profile)
        for t in d.get("triggers", []):
            t["match"] = {"prefect.resource.id": "brainstacks.profile.srv"}
        if d.get("schedules"):
            d["schedules"] = [{"interval": 3}]
        out.append(d)
    spec["deployments"] = out
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def flow_runs(api: str, deployment_id: str) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}, timeout=10)
    r.raise_for_status()
    return r.json()


def wait_for(api: str, deployment_id: str, n: int, timeout: float) -> list[dict]:
    """Wait until ``n`` runs of a deployment exist and are all final; returns them (oldest first)."""
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = flow_runs(api, deployment_id)
        if len(runs) >= n and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                                  for r in runs):
            break
        time.sleep(2)
    return sorted(runs, key=lambda r: r["created"])


def artifacts_like(api: str, prefix: str) -> list[dict]:
    """Every version of every artifact whose key starts with ``prefix`` (Prefect keeps each run's)."""
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"like_": prefix}}, "limit": 200},
                   timeout=10)
    r.raise_for_status()
    return [a for a in r.json() if (a.get("key") or "").startswith(prefix)]


def manifest(store: Path) -> dict:
    current = json.loads((store / "training" / "main" / "current.json").read_text())
    return json.loads((Path(current["dir"]) / "manifest.json").read_text())


def _rl_version(entry: dict) -> str | None:
    return (entry.get("rl") or {}).get("version")


def trained_rounds(m: dict, before: dict | None = None) -> dict[str, int]:
    """Rounds per domain trained by the run that wrote ``m``: stack files not in ``before`` (reused: linked)."""
    old = {r.get("file_sha256") for e in (before or {}).get("domains", {}).values() for r in e["rounds"]}
    out = {d: sum(r.get("file_sha256") not in old for r in e["rounds"] if r.get("version") != _rl_version(e))
           for d, e in m["domains"].items()}  # SFT rounds; a domain's RL stack (training.rl) is not counted
    assert all(bool(e.get("reused_from")) == (out[d] == 0) for d, e in m["domains"].items()), m["domains"]
    return out


@pytest.mark.slow
def test_real_server_one_retraining_per_data_change_then_router_and_eval_and_schedules(tmp_path):
    port = free_port()
    env = server_env(tmp_path, port)
    api = env["PREFECT_API_URL"]
    profile = write_profile(tmp_path)
    deployments = write_deployments(tmp_path, profile)
    deploy_env = {**env, "BRAINSTACKS_HOME": "/nonexistent/deploy-time-value"}  # the worker's value must win
    cli = lambda *a, e=env: subprocess.run([PREFECT, *a], env=e, cwd=ROOT, capture_output=True,  # noqa: E731
                                           text=True, timeout=120)
    server = worker = None
    wlog = lambda: (tmp_path / "worker.log").read_text()[-4000:]  # noqa: E731
    try:
        server = start_server(env, port, tmp_path / "server.log")
        r = cli("work-pool", "create", POOL, "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ("prepare-srv", "retrain-srv", "pipeline-srv"):  # the watcher later: its schedule starts at once
            r = cli("--no-prompt", "deploy", "--name", name, "--prefect-file", str(deployments), e=deploy_env)
            assert r.returncode == 0, r.stdout + r.stderr
        ids = {d["name"]: d["id"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
        assert set(ids) == {"prepare-srv", "retrain-srv", "pipeline-srv"}, ids
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL], env=env, cwd=tmp_path,
                                  stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        store = tmp_path / "art" / "srv"

        # 1. the pipeline on a fresh store: prepare, train, route, evaluate, and NO competing retraining
        r = cli("deployment", "run", "brainstacks-pipeline/pipeline-srv")
        assert r.returncode == 0, r.stdout + r.stderr
        pipe = wait_for(api, ids["pipeline-srv"], 1, 400)
        assert [p["state"]["type"] for p in pipe] == ["COMPLETED"], wlog()
        time.sleep(8)  # a triggered retraining would have been created by now
        assert flow_runs(api, ids["retrain-srv"]) == [], "the pipeline's own preparation started a retraining"
        first = manifest(store)
        assert trained_rounds(first) == {"chat": 1, "code": 1, "math": 1}
        frozen = [r for e in first["domains"].values() for r in e["rounds"] if r["status"] == "frozen"]
        cards = artifacts_like(api, "model-card-srv-main-")
        assert len(cards) == len(frozen), [a["key"] for a in cards]  # each published once, not twice

        # 2. one record of the middle domain changes -> exactly one retraining: code and math, chat reused;
        #    then the router and the evaluation follow by themselves
        rows = json.loads((tmp_path / "code.json").read_text())
        rows[5]["output"] = "def f5():\n    return 5  # five"
        (tmp_path / "code.json").write_text(json.dumps(rows))
        r = cli("deployment", "run", "prepare-data/prepare-srv")
        assert r.returncode == 0, r.stdout + r.stderr
        prep = wait_for(api, ids["prepare-srv"], 1, 120)
        assert [p["state"]["type"] for p in prep] == ["COMPLETED"], wlog()
        runs = wait_for(api, ids["retrain-srv"], 1, 400)
        time.sleep(5)  # a run per domain (no debounce) would have been created by now
        runs = wait_for(api, ids["retrain-srv"], 1, 400)
        assert [x["state"]["type"] for x in runs] == ["COMPLETED"], wlog()
        second = manifest(store)
        counts = trained_rounds(second, first)
        print(f"rounds trained after the one-record change in code: {counts}")
        assert counts == {"chat": 0, "code": 1, "math": 1}, counts
        chat = second["domains"]["chat"]["rounds"][0]["file"]
        assert os.path.samefile(chat, first["domains"]["chat"]["rounds"][0]["file"])  # the same file, linked
        # the routed system is usable again without a hand-run step (generate refuses a stale router)
        gen = subprocess.run([str(Path(sys.executable).parent / "brainstacks"), "generate", "--config", str(profile),
                              "--prompt", "What is 2 plus 3?", "--max-new-tokens", "4"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert gen.returncode == 0, gen.stdout[-2000:] + gen.stderr[-3000:]
        assert "routing weights" in gen.stdout and "stacks used:" in gen.stdout, gen.stdout
        evals = artifacts_like(api, "eval-srv-main")
        assert any("done:" in (a.get("description") or "") for a in evals), [a.get("description") for a in evals]

        # 3. a schedule creates runs by itself (the scheduler service works with the pinned SQLAlchemy)
        r = cli("--no-prompt", "deploy", "--name", "watch-srv", "--prefect-file", str(deployments), e=deploy_env)
        assert r.returncode == 0, r.stdout + r.stderr
        watch_id = next(d["id"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
                        if d["name"] == "watch-srv")
        deadline, done = time.monotonic() + 150, []
        while time.monotonic() < deadline and not done:
            done = [x for x in flow_runs(api, watch_id)
                    if x.get("auto_scheduled") and x["state"]["type"] == "COMPLETED"]
            time.sleep(2)
        assert done, (flow_runs(api, watch_id), (tmp_path / "server.log").read_text()[-3000:])
        assert "bulk DML" not in (tmp_path / "server.log").read_text()
    finally:
        stop(worker, signal.SIGINT, grace=20)
        stop(server)
