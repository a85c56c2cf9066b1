"""``brainstacks catalog migrate --to postgresql://... --store-to s3://...``: a one-machine store into S3 + PostgreSQL.

A tiny profile is prepared and trained on a local folder with its DuckDB catalog, then moved
into a moto S3 bucket (tests/s3_server.py) and the session's PostgreSQL (tests/pg_server.py).
A worker in an empty folder with its own cache and the URL profile then sees every row, the
same audit answers, and retrains nothing; a second migration uploads and adds nothing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml



def _profile(root: Path, artifact_root: str | None, name: str = "moved") -> Path:
    """The mini training profile (tests/test_training_run.py) without its RL stages, named ``name`` (its own
    PostgreSQL schema)."""
    from test_training_run import _mini_profile

    root.mkdir(parents=True)
    cfg = _mini_profile(root)
    raw = yaml.safe_load(cfg.read_text())
    raw["name"] = name
    raw["training"].pop("rl", None)
    if artifact_root is not None:
        raw.update(artifact_root=artifact_root, storage={"cache_dir": "cache"})
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _tree(folder: Path) -> dict[str, str]:
    return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _audit(main, capsys, cfg: Path, uri: str) -> str:
    """``brainstacks audit --artifact uri``'s answer with paths and catalog locations taken out."""
    capsys.readouterr()
    assert main(["audit", "--config", str(cfg), "--artifact", uri]) == 0
    text = capsys.readouterr().out
    text = re.sub(r"(s3|file)://\S+|/\S+|postgresql://\S+", "<path>", text)
    return "\n".join(line for line in text.splitlines() if "catalog" not in line.lower())


def _bucket(store) -> dict[str, tuple]:
    return {k: (v.get("size"), v.get("ETag")) for k, v in store.fs.find(store._key(""), detail=True).items()}


def test_a_local_store_moves_into_s3_and_postgres_without_losing_a_row(s3_env, pg_server, tmp_path, monkeypatch,
                                                                        capsys):
    from flows.cli import main

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.lineage.blob_store import BlobStore
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.lineage.migrate import table_counts
    from brainstacks_core.profile import load_profile
    from brainstacks_core.training.run import train_profile

    monkeypatch.delenv("BRAINSTACKS_CATALOG_URL", raising=False)
    local_cfg = _profile(tmp_path / "A", None)
    local = load_profile(local_cfg)
    assert local.context.remote is None and local.store.is_relative_to(tmp_path / "A")
    cat_a = Catalog(local.catalog_path)
    prepare_all(local.context, local.data, catalog=cat_a)
    first = train_profile(local.training_setup, catalog=cat_a)
    counts = table_counts(cat_a)
    stacks = cat_a.list_artifacts("stack")
    assert stacks and counts["artifacts"] > len(stacks) and counts["members"] > 0
    before = _audit(main, capsys, local_cfg, stacks[-1]["uri"])
    files_before = _tree(local.store)

    url = s3_env.make_bucket("moved") + "/bs"
    capsys.readouterr()
    assert main(["catalog", "migrate", "--config", str(local_cfg), "--to", pg_server.url, "--store-to", url]) == 0
    out = capsys.readouterr().out
    assert "pointers training: main" in out and "pointers dataset: chat, math" in out
    assert _tree(local.store) == files_before  # the source store and its catalog are left as they were

    # a worker in an empty folder, its own cache, the URL profile and the shared catalog
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)
    url_cfg = _profile(tmp_path / "B", url)
    worker = load_profile(url_cfg)
    assert not worker.store.exists()
    cat_b = Catalog.for_context(worker.context)
    assert table_counts(cat_b) == counts  # every row of every table
    rows = cat_b.list_artifacts()
    assert all(r["path"] is None or not Path(r["path"]).is_absolute() for r in rows)
    assert not [r for r in rows if str(tmp_path) in str(r["path"]) + str(r["metadata"])]
    named = {r["version"] for r in cat_a.list_artifacts() if r["path"]}  # a file in the local store or the checkout
    stored = [r for r in rows if r["kind"] not in ("source", "eval_set") and r["version"] in named]
    assert stored and all(r["path"].startswith(f"{url}/blobs/sha256/") for r in stored), \
        [(r["uri"], r["path"]) for r in stored if not str(r["path"]).startswith(url)]
    assert _audit(main, capsys, url_cfg, stacks[-1]["uri"]) == before

    store = BlobStore(worker.context.remote)
    listing = _bucket(store)
    leaks = {k: store.fs.cat_file(k) for k in listing}
    leaks = {k: b[max(0, b.find(str(tmp_path).encode()) - 200):][:400] for k, b in leaks.items()
             if str(tmp_path).encode() in b}
    assert not leaks  # no host path in the store
    capsys.readouterr()
    assert main(["catalog", "migrate", "--config", str(local_cfg), "--to", pg_server.url, "--store-to", url]) == 0
    again = capsys.readouterr().out
    added = [line.split() for line in again.splitlines() if line.split()[:1] and line.split()[0] in counts]
    assert added and all(int(cols[2]) == 0 for cols in added), again  # no row added
    assert _bucket(store) == listing  # nothing uploaded, every pointer holds the bytes it held
    assert table_counts(cat_b) == counts

    again = train_profile(worker.training_setup, catalog=cat_b)  # materialises the published run and its base
    assert len(cat_b.list_artifacts("stack")) == len(stacks)  # nothing retrained
    frozen = lambda m: [(r["stack_id"], r["file_sha256"]) for d in m["domains"].values()  # noqa: E731
                        for r in d["rounds"] if r["status"] == "frozen"]
    assert frozen(again) == frozen(first)
    capsys.readouterr()
    assert main(["plan", "--config", str(url_cfg)]) == 0
    plan = capsys.readouterr().out
    assert "0 of 2 domains would train" in plan, plan


def test_routing_folders_get_their_pointer_and_a_gone_file_keeps_its_row_without_a_path(pg_server, tmp_path,
                                                                                         monkeypatch):
    """The routing pointer (a folder whose JSON names the old folder by absolute path) and a row whose file is
    gone, on a file:// store: no training needed."""
    import json

    from pydantic import SecretStr

    from brainstacks_core.files import sha256_file
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.lineage.migrate import table_counts
    from brainstacks_core.lineage.store_sync import materialise_pointer
    from brainstacks_core.profile import load_profile
    from brainstacks_core.store_migration import migrate_store

    monkeypatch.delenv("BRAINSTACKS_CATALOG_URL", raising=False)
    src = load_profile(_profile(tmp_path / "A", None, "movedroutes")).context
    folder = src.store / "routing" / "main"
    (folder / "router" / "v1").mkdir(parents=True)
    router = folder / "router" / "v1" / "router.safetensors"
    router.write_bytes(b"router weights")
    (folder / "router" / "v1" / "meta.json").write_text(json.dumps({"version": "r1", "file": str(router)}))
    (folder / "result.json").write_text(json.dumps({"key": "k1", "router_folder": str(router.parent)}))
    cat = Catalog(src.catalog_path)
    cat.record_artifact(uri="router://movedroutes/main", version="r1", kind="router", path=str(router),
                        sha256=sha256_file(router), code_version="t", config_hash=None)
    gone = src.store / "reports" / "gone.md"
    cat.record_artifact(uri="report://movedroutes/old", version="g1", kind="report", path=str(gone), sha256=None,
                        code_version="t", config_hash=None, inputs=["r1"])

    url = f"file://{tmp_path / 'objects'}"
    target = load_profile(_profile(tmp_path / "B", url, "movedroutes")).context
    target = target.model_copy(update={"catalog_url": SecretStr(pg_server.url)})
    report = migrate_store(src, target)
    assert report["pointers"] == {"dataset": [], "training": [], "routing": ["main"]}
    assert len(report["missing"]) == 1 and str(gone) in report["missing"][0]
    shared = Catalog.for_context(target)
    assert table_counts(shared) == table_counts(cat)
    assert shared.get("r1")["path"].startswith(f"{url}/blobs/sha256/") and shared.get("g1")["path"] is None

    assert materialise_pointer(target, "routing", "main")["key"] == "k1"
    got = target.store / "routing" / "main"
    assert (got / "router" / "v1" / "router.safetensors").read_bytes() == b"router weights"
    assert json.loads((got / "router" / "v1" / "meta.json").read_text())["file"] == \
        str((got / "router" / "v1" / "router.safetensors").resolve())  # the reader's own path
