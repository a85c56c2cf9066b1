"""A REAL Prefect server with API authentication, and a flow run against it with a PostgreSQL catalog.

The README's "Many machines" section opens the server to other hosts only with
``PREFECT_SERVER_API_AUTH_STRING`` on the server and ``PREFECT_API_AUTH_STRING`` on
every client (Prefect's own basic authentication). This test starts
``prefect server start`` with an auth string and checks, on the real server:

* a client without the auth string is refused (HTTP 401 from the REST API, and the
  ``prefect`` CLI fails);
* a client with it works: ``brainstacks prepare`` runs as a flow run on that server,
  with its catalog on the session's PostgreSQL (password authentication);
* neither the catalog URL's password nor the API auth string's password reaches the
  server's log, the flow run's logs, its artifacts or the store's files.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from test_prefect_server import free_port, server_env, start_server, stop
from two_domain_profile import write_two_domain_profile

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
BRAINSTACKS = [sys.executable, "-m", "flows.cli"]


def _profile(tmp_path: Path) -> Path:
    chat = [{"instruction": f"Write a friendly letter {i}", "output": f"Dear friend {i}"} for i in range(15)]
    cfg = write_two_domain_profile(tmp_path, chat, 15)
    raw = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**raw, "name": "auth" + uuid.uuid4().hex[:6]}))
    return cfg


def _post(api: str, path: str, auth: tuple[str, str] | None, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{api}{path}", json=body or {}, auth=auth, timeout=20)


@pytest.mark.slow
def test_server_refuses_clients_without_the_auth_string_and_no_password_leaks(tmp_path, pg_server):
    port = free_port()
    env = server_env(tmp_path, port)
    api_pw = "api-" + secrets.token_hex(8)
    server = None
    try:
        server = start_server({**env, "PREFECT_SERVER_API_AUTH_STRING": f"admin:{api_pw}"}, port,
                              tmp_path / "server.log")
        api = env["PREFECT_API_URL"]
        # no auth string: refused by the API and by Prefect's own CLI
        assert _post(api, "/flows/filter", None).status_code == 401
        assert _post(api, "/flows/filter", ("admin", "wrong")).status_code == 401
        cli = subprocess.run([PREFECT, "work-pool", "ls"], env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode != 0 and "401" in cli.stdout + cli.stderr
        # with it: a real flow run of the pipeline's preparation, its catalog on PostgreSQL
        client = {**env, "PREFECT_API_AUTH_STRING": f"admin:{api_pw}", "BRAINSTACKS_CATALOG_URL": pg_server.url}
        cfg = _profile(tmp_path)
        run = subprocess.run([*BRAINSTACKS, "prepare", "--config", str(cfg)], env=client, cwd=ROOT,
                             capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        auth = ("admin", api_pw)
        runs = _post(api, "/flow_runs/filter", auth).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        logs = _post(api, "/logs/filter", auth, {"limit": 200}).json()
        artifacts = _post(api, "/artifacts/filter", auth).json()
        assert logs and artifacts  # the run did log and publish through the authenticated API
    finally:
        stop(server)
    texts = {"server log": (tmp_path / "server.log").read_text(), "client output": run.stdout + run.stderr,
             "flow-run logs": str(logs), "artifacts": str(artifacts)}
    store = Path(yaml.safe_load(cfg.read_text())["artifact_root"])
    store = store if store.is_absolute() else cfg.parent / store
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    for secret in (pg_server.password, api_pw):
        leaked = [k for k, t in texts.items() if secret in t]
        leaked += [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"a password reached {leaked}"
    assert os.environ.get("PREFECT_API_AUTH_STRING") is None  # the test did not change this process
