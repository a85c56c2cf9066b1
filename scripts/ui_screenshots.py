"""Screenshots of the Prefect UI as a data team sees it: deployment run forms and a flow run's artifacts.

    python scripts/ui_screenshots.py [OUT_DIR]        # default /tmp/ui-shots (never the repository)

Needs a headless Chromium (Debian: ``apt-get install -y chromium``). What it does:

1. starts ``prefect server start`` on a free port of 127.0.0.1 with its own
   PREFECT_HOME (a temp dir), ``PREFECT_API_URL`` set (the UI reads it) and
   analytics off;
2. creates the ``cpu`` and ``gpu`` process pools and deploys every deployment of
   prefect.yaml (``prefect --no-prompt deploy --all``);
3. runs, in this process against that server, ``prepare-data`` on the demo profile
   (one domain; a table artifact) and the whole ``brainstacks-pipeline`` on a tiny
   two-domain copy of it (data table, training progress, model cards, stacks table,
   training summary, report and routing report with their plots inline), artifacts
   in a temp dir;
4. saves PNGs of the deployments list, the run forms of the pipeline, prepare,
   retraining, train-domain and watch deployments, the training and pipeline flow
   runs' Artifacts tabs and each artifact's page (markdown pages taller, so the
   plots are in the picture); then stops the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
FORMS = ["brainstacks-pipeline/demo", "prepare-data/prepare-demo", "continual-training/retrain-demo-on-data-change",
         "train-domain/train-domain-gpu", "watch-sources/watch-demo"]


def free_port() -> int:
    """A TCP port nothing listens on (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    """The Chromium binary, or exit with how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("ui_screenshots: no chromium found; install it: apt-get install -y chromium")


def shoot(browser: str, url: str, png: Path, wait_ms: int = 12000, height: int = 1000) -> Path:
    """One headless screenshot (1400 x ``height``) after the page's scripts ran for ``wait_ms`` of virtual time."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--virtual-time-budget={wait_ms}", f"--window-size=1400,{height}", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"{png}  <- {url}")
    return png


def tiny_profile(folder: Path) -> Path:
    """The demo profile cut to two domains and a tiny base (a training run of a few seconds)."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(name="ui-demo", artifact_root=str(folder / "artifacts"))
    raw["data"].update(domains=["chat", "math"], max_rows_per_domain=80, eval_sets=[], sources={
        "chat": [{"kind": "generated", "generator": "chat", "rows": 80}],
        "math": [{"kind": "generated", "generator": "math", "rows": 80}]})
    raw["base"]["tiny"].update(vocab_size=512, hidden_size=32, intermediate_size=64, pretrain_steps=5,
                               pretrain_batch_size=4, seq_len=64)
    raw["moe"].update(rank=4)
    raw["training"].update(max_rounds=2, basis={"k": 4}, eval_rows=8, null_space_val_rows=8, ablation=False,
                           sft={"max_steps": 6, "eval_steps": 3, "batch_size": 8, "learning_rate": 0.01,
                                "warmup_steps": 0, "max_length": 64})
    raw["router"] = {"max_length": 64, "hidden": 32, "heads": 2, "epochs": 2, "exhaustive_sample": 4}
    raw.pop("experiment1", None)
    raw.pop("eval", None)
    path = folder / "ui-demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main(argv: list[str] | None = None) -> int:
    """Start the server, deploy, run two flows, take the screenshots, stop the server."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="/tmp/ui-shots", help="folder for the PNGs (default /tmp/ui-shots)")
    ap.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    ap.add_argument("--forms-only", action="store_true", help="only the deployment list and run forms (no flow runs)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if ROOT in out.parents or out == ROOT:
        sys.exit(f"ui_screenshots: {out} is inside the repository; give a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    port = args.port or free_port()
    work = Path(tempfile.mkdtemp(prefix="ui-shots-"))
    base, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "prefect-home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", BRAINSTACKS_HOME=str(ROOT), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    os.environ.update(env)  # this process runs two flows against the same server
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        import httpx

        for _ in range(180):
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            sys.exit(f"server not healthy: {(work / 'server.log').read_text()[-2000:]}")
        for pool in ("cpu", "gpu"):
            subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process"], env=env, check=True,
                           capture_output=True, cwd=ROOT)
        subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, check=True, capture_output=True,
                       cwd=ROOT)
        deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=10).json()}
        ids = {f"{flows[d['flow_id']]}/{d['name']}": d["id"] for d in deps}

        shots = [shoot(browser, f"{base}/v2/deployments", out / "01-deployments.png")]
        for i, name in enumerate(FORMS, start=2):
            slug = name.split("/")[1]
            shots.append(shoot(browser, f"{base}/v2/deployments/deployment/{ids[name]}/run",
                               out / f"{i:02d}-form-{slug}.png"))
        if args.forms_only:
            print(f"{len(shots)} screenshots in {out}")
            return 0

        sys.path.insert(0, str(ROOT))
        from flows.pipeline import brainstacks_pipeline
        from flows.prepare_data import prepare_data

        prepare_data(config_path=str(ROOT / "configs" / "demo.yaml"), domain="math",
                     artifact_root=str(work / "artifacts"))
        cfg = str(tiny_profile(work))
        brainstacks_pipeline(config_path=cfg)

        runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC"}, timeout=10).json()
        for flow_name in ("continual-training", "brainstacks-pipeline"):
            run = next(r for r in runs if flows.get(r["flow_id"]) == flow_name)
            shots.append(shoot(browser, f"{base}/v2/runs/flow-run/{run['id']}?tab=Artifacts",
                               out / f"{len(shots) + 1:02d}-flow-run-artifacts-{flow_name}.png"))
        arts = httpx.post(f"{api}/artifacts/filter", json={"sort": "CREATED_DESC"}, timeout=10).json()
        seen: set[str] = set()
        for a in arts:
            if not a.get("key") or a["key"] in seen:
                continue
            seen.add(a["key"])
            shots.append(shoot(browser, f"{base}/v2/artifacts/artifact/{a['id']}",
                               out / f"{len(shots) + 1:02d}-artifact-{a['key']}.png",
                               height=3200 if a.get("type") == "markdown" else 1000))
        print(f"{len(shots)} screenshots in {out}")
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
