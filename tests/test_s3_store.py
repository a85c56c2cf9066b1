"""The artifact store on S3: blobs, cache, integrity, an unreachable endpoint, two workers sharing S3 + PostgreSQL.

Every test talks to a real S3 endpoint: moto's server mode on 127.0.0.1 (tests/s3_server.py,
``moto[server]`` is in the dev extra), through s3fs exactly as it would talk to AWS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from brainstacks_core.files import sha256_file
from brainstacks_core.lineage.blob_store import BlobIntegrityError, BlobStore
from brainstacks_core.lineage.storage_config import RemoteStore
from s3_server import free_port


@pytest.fixture(params=["s3", "file"])
def new_url(request, tmp_path):
    """A fresh store URL per call: a bucket on the moto server, or a file:// folder (the same suite on both)."""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_env")
        return lambda name: s3.make_bucket(name)
    return lambda name: f"file://{tmp_path / 'objects' / name}"


def _store(url: str, cache: Path, budget: int = 10**9) -> BlobStore:
    return BlobStore(RemoteStore(url=url, cache_dir=cache, cache_bytes=budget),
                     repair_hint="brainstacks repair --config configs/p.yaml")


def test_put_is_content_addressed_written_once_and_read_back_verified(new_url, tmp_path):
    url = new_url("blobs-a") + "/team"
    store = _store(url, tmp_path / "cache")
    store.check()
    f = tmp_path / "f.bin"
    f.write_bytes(b"stack bytes" * 100)
    uri = store.put(f)
    assert uri == f"{url}/blobs/sha256/{sha256_file(f)[:2]}/{sha256_file(f)}"
    assert store.put(f) == uri and store.has(sha256_file(f))  # a second put only finds it there
    other = _store(url, tmp_path / "other-cache")  # another worker: an empty cache, a download
    out = other.get(uri, tmp_path / "copy.bin")
    assert out.read_bytes() == f.read_bytes()
    assert (tmp_path / "other-cache" / "blobs" / sha256_file(f)).is_file()


def test_the_cache_keeps_its_byte_budget_evicting_the_least_recently_used(new_url, tmp_path):
    url = new_url("blobs-b")
    writer = _store(url, tmp_path / "w")
    uris = []
    for i in range(3):
        f = tmp_path / f"b{i}"
        f.write_bytes(bytes([i]) * 100)
        uris.append(writer.put(f))
    reader = _store(url, tmp_path / "r", budget=250)
    reader.get(uris[0])
    reader.get(uris[1])
    reader.get(uris[0])  # a hit: now the most recently used
    reader.get(uris[2])
    cached = {p.name for p in (tmp_path / "r" / "blobs").iterdir()}
    assert reader.cached_bytes() <= 250
    assert cached == {reader.sha_of(uris[0]), reader.sha_of(uris[2])}  # uris[1] was the least recently used


def test_a_damaged_cache_entry_is_caught_on_the_hit_and_fetched_again(new_url, tmp_path):
    store = _store(new_url("blobs-c"), tmp_path / "c")
    f = tmp_path / "f"
    f.write_bytes(b"x" * 64)
    uri = store.put(f)
    entry = tmp_path / "c" / "blobs" / store.sha_of(uri)
    entry.write_bytes(b"y" * 64)  # bit rot in the cache
    assert store.get(uri).read_bytes() == b"x" * 64
    assert entry.read_bytes() == b"x" * 64


def test_a_blob_whose_bytes_differ_from_its_name_is_refused_with_the_repair_command(new_url, tmp_path):
    store = _store(new_url("blobs-d"), tmp_path / "c")
    f = tmp_path / "f"
    f.write_bytes(b"good")
    uri = store.put(f)
    sha = store.sha_of(uri)
    store.fs.pipe_file(store._key(f"blobs/sha256/{sha[:2]}/{sha}"), b"evil")  # changed behind the catalog's back
    reader = _store(store.url, tmp_path / "fresh")
    with pytest.raises(BlobIntegrityError, match="brainstacks repair --config configs/p.yaml") as err:
        reader.get(uri)
    assert sha256_file(f) in str(err.value)
    assert not list((tmp_path / "fresh" / "blobs").iterdir())  # nothing refused is kept


def test_pointers_are_replaced_whole_and_absent_until_written(new_url, tmp_path):
    store = _store(new_url("blobs-e"), tmp_path / "c")
    assert store.read_pointer("demo", "dataset", "math") is None
    store.write_pointer("demo", "dataset", "math", {"version": "v1"})
    store.write_pointer("demo", "dataset", "math", {"version": "v2"})
    assert _store(store.url, tmp_path / "o").read_pointer("demo", "dataset", "math") == {"version": "v2"}


def test_a_published_folder_reaches_another_worker_with_its_own_paths_and_no_host_path(s3_env, tmp_path):
    """publish_pointer / materialise_pointer (the routing folder, a training run): JSON naming the writer's
    working copy is published with a token and materialised with the reader's path."""
    from brainstacks_core.lineage.context import StoreContext
    from brainstacks_core.lineage.store_sync import materialise_pointer, publish_pointer

    url = s3_env.make_bucket("folders")
    ctx = {side: StoreContext(name="p", store=tmp_path / side / "work", repo_root=tmp_path / side,
                              remote=RemoteStore(url=url, cache_dir=tmp_path / side / "cache"))
           for side in ("A", "B")}
    out = ctx["A"].store / "routing" / "main"
    out.mkdir(parents=True)
    (out / "router.bin").write_bytes(b"\x00weights")
    (out / "result.json").write_text(json.dumps({"router_folder": str(out / "router.bin")}))
    assert materialise_pointer(ctx["B"], "routing", "main") is None  # nothing published yet
    publish_pointer(ctx["A"], "routing", "main", list(out.iterdir()), key="k1")
    assert materialise_pointer(ctx["B"], "routing", "main")["key"] == "k1"
    mine = ctx["B"].store / "routing" / "main"
    assert json.loads((mine / "result.json").read_text()) == {"router_folder": str((mine / "router.bin").resolve())}
    assert (mine / "router.bin").read_bytes() == b"\x00weights"
    store = BlobStore(ctx["B"].remote)
    assert all(str(tmp_path).encode() not in store.fs.cat_file(k) for k in store.fs.find("folders"))


def _profile_dir(root: Path, url: str, with_data: bool = True) -> Path:
    """A checkout-like folder: configs/p.yaml (artifact_root ``url``, cache in <root>/cache) and its data."""
    (root / "configs").mkdir(parents=True)
    if with_data:
        (root / "data").mkdir()
        chat = [{"instruction": f"write a letter to my friend number {i}", "output": f"Dear friend {i}"}
                for i in range(24)]
        code = [{"instruction": f"python def f{i}", "output": "return 1"} for i in range(24)]
        (root / "data" / "chat.json").write_text(json.dumps(chat))
        (root / "data" / "code.json").write_text(json.dumps(code))
    cfg = root / "configs" / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "t", "artifact_root": url, "storage": {"cache_dir": "cache", "connect_timeout_s": 2},
        "data": {"domains": ["chat", "code"], "margin": 2, "min_score": 2,
                 "lexicons": {"chat": ["letter", "friend"], "code": ["python", "function", "def", "return"]},
                 "sources": {"chat": [{"kind": "local", "format": "alpaca", "path": "data/chat.json"}],
                             "code": [{"kind": "local", "format": "alpaca", "path": "data/code.json"}]}}}))
    return cfg


def test_an_unreachable_endpoint_is_one_error_naming_the_url_and_the_setting_and_writes_nothing(
        s3_env, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    cfg = _profile_dir(tmp_path, "s3://nowhere/prefix")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert main(["prepare", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "s3://nowhere/prefix" in err and "AWS_ENDPOINT_URL" in err and "artifact_root" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "artifacts").exists()


def test_credentials_in_storage_options_are_refused(tmp_path):
    from brainstacks_core.profile import ProfileError, load_profile

    cfg = _profile_dir(tmp_path, "s3://b/p", with_data=False)
    raw = yaml.safe_load(cfg.read_text())
    raw["storage"]["storage_options"] = {"secret": "hunter2", "region_name": "eu-west-1"}
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match="storage.storage_options: storage_options may not hold credentials"):
        load_profile(cfg)


def _secret_free(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_two_workers_in_empty_folders_share_prepared_data_through_s3_and_postgres(
        harness, s3_env, pg_server, tmp_path, monkeypatch, capsys, caplog):
    """Worker A prepares into s3://; worker B, in an empty folder with only the profile, reads the same
    bytes through the pointers, the PostgreSQL catalog and the blobs; no host path, no secret anywhere."""
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from flows.cli import main

    url = s3_env.make_bucket("shared") + "/brainstacks"
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    caplog.set_level("DEBUG")
    a, b = tmp_path / "A", tmp_path / "B"
    cfg_a, cfg_b = _profile_dir(a, url), _profile_dir(b, url, with_data=False)

    assert main(["prepare", "--config", str(cfg_a)]) == 0
    prof_a, prof_b = load_profile(cfg_a), load_profile(cfg_b)
    assert prof_a.store.is_relative_to(a / "cache") and prof_b.store.is_relative_to(b / "cache")
    cat = Catalog.for_context(prof_b.context)
    rows = [r for r in cat.list_artifacts("dataset")]
    assert rows and all(r["path"].startswith(f"{url}/blobs/sha256/") for r in rows)
    for r in cat.list_artifacts():  # no host path in any catalog row
        text = json.dumps(r, default=str)
        assert str(tmp_path) not in text, r

    assert not (b / "cache").exists()
    assert main(["plan", "--config", str(cfg_b)]) == 0  # reads every domain's prepared data
    out = capsys.readouterr().out
    assert "# run t/main: 2 of 2 domains would train" in out
    for domain in ("chat", "code"):
        train = cat.latest(f"dataset://t/{domain}/train")
        rel = train["metadata"]["manifest"].rsplit("/", 1)[0] + "/train.parquet"
        mine, theirs = prof_a.store / rel, prof_b.store / rel
        assert theirs.is_file() and sha256_file(theirs) == sha256_file(mine) == train["sha256"]
        manifest = (prof_b.store / train["metadata"]["manifest"]).read_text()
        assert str(a) not in manifest and str(b) not in manifest  # manifests hold no host path

    events = (prof_a.store / "lineage" / "openlineage.jsonl").read_text()
    assert '"COMPLETE"' in events and str(tmp_path) not in events  # OpenLineage events: no host path either
    secret = s3_env.secret
    assert secret not in out + capsys.readouterr().err + caplog.text
    assert not _secret_free(a, secret) and not _secret_free(b, secret)
    store = BlobStore(prof_b.context.remote)
    objects = store.fs.find("shared")
    assert objects
    assert all(secret.encode() not in store.fs.cat_file(k) for k in objects)
    assert secret not in json.dumps([r for r in cat.list_artifacts()], default=str)


def test_a_writer_killed_before_its_pointer_leaves_nothing_visible(s3_env, tmp_path, monkeypatch):
    """Blobs and catalog rows without the pointer: a reader still sees no prepared version."""
    from brainstacks_core.data import published
    from brainstacks_core.data.pipeline import load_prepared, prepare_all
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile

    url = s3_env.make_bucket("killed") + "/p"
    prof = load_profile(_profile_dir(tmp_path / "A", url))
    shared_catalog = Catalog(tmp_path / "shared.duckdb")

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before the pointer")

    monkeypatch.setattr(published, "write_dataset_pointer", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_all(prof.context, prof.data, catalog=shared_catalog)
    assert shared_catalog.list_artifacts("dataset")  # blob and catalog row are there ...
    with pytest.raises(LookupError, match="no prepared dataset"):  # ... but no reader follows them yet
        load_prepared(load_profile(_profile_dir(tmp_path / "B", url, with_data=False)).context, "chat",
                      shared_catalog)


@pytest.mark.slow
def test_a_run_trained_on_one_worker_resumes_on_another_without_retraining(s3_env, pg_server, tmp_path,
                                                                            monkeypatch):
    """Worker A prepares and trains (stacks published, rows naming blob URIs, pointer last); worker B, in an
    empty folder sharing only S3 + PostgreSQL, materialises the run and trains nothing."""
    from test_training_run import _mini_profile

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from brainstacks_core.training.run import current_run_dir, train_profile

    url = s3_env.make_bucket("runs") + "/bs"
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)
    profiles = []
    for side in ("A", "B", "C"):
        cfg = _mini_profile(tmp_path / side) if (tmp_path / side).mkdir() is None else None
        raw = yaml.safe_load(cfg.read_text())
        raw.update(name="minis3", artifact_root=url, storage={"cache_dir": "cache"})
        cfg.write_text(yaml.safe_dump(raw))
        profiles.append(load_profile(cfg))
    a, b, c = profiles
    cat_a = Catalog.for_context(a.context)
    prepare_all(a.context, a.data, catalog=cat_a)
    first = train_profile(a.training_setup, catalog=cat_a)
    stacks = cat_a.list_artifacts("stack")
    assert stacks and all(r["path"].startswith(f"{url}/blobs/sha256/") for r in stacks)

    cat_b = Catalog.for_context(b.context)
    again = train_profile(b.training_setup, catalog=cat_b)
    assert len(cat_b.list_artifacts("stack")) == len(stacks)  # nothing was retrained
    frozen = lambda m: [(r["stack_id"], r["file_sha256"]) for d in m["domains"].values()  # noqa: E731
                        for r in d["rounds"] if r["status"] == "frozen"]
    assert frozen(again) == frozen(first)
    folder_b = current_run_dir(b.context, "main")
    assert folder_b.is_relative_to(b.store)
    for r in (r for d in again["domains"].values() for r in d["rounds"] if r["status"] == "frozen"):
        assert Path(r["file"]).is_relative_to(b.store) and sha256_file(r["file"]) == r["file_sha256"]
    store = BlobStore(b.context.remote)
    for key in store.fs.find("runs"):
        assert str(tmp_path).encode() not in store.fs.cat_file(key), key  # no host path in the store

    # a stack object corrupted in the bucket: a third worker refuses it and names the repair command ...
    from flows.cli import main

    bad = frozen(first)[0][1]
    store.fs.pipe_file(store._key(f"blobs/sha256/{bad[:2]}/{bad}"), b"not a stack")
    with pytest.raises(BlobIntegrityError, match=r"brainstacks repair --config .*C/configs/mini.yaml"):
        train_profile(c.training_setup, catalog=Catalog.for_context(c.context))
    # ... a worker holding the verified file repairs it (re-publishes), and the third one then trains nothing
    assert main(["repair", "--config", str(b.source_path), "--no-resume"]) == 0
    third = train_profile(c.training_setup, catalog=Catalog.for_context(c.context))
    assert frozen(third) == frozen(first) and len(cat_b.list_artifacts("stack")) == len(stacks)


def test_a_dataset_row_whose_sha256_differs_from_its_blob_is_refused(s3_env, tmp_path):
    import duckdb

    from brainstacks_core.data.pipeline import load_prepared, prepare_all
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile

    url = s3_env.make_bucket("rows") + "/p"
    prof = load_profile(_profile_dir(tmp_path / "A", url))
    shared = Catalog(tmp_path / "shared.duckdb")
    prepare_all(prof.context, prof.data, catalog=shared)
    reader = load_profile(_profile_dir(tmp_path / "B", url, with_data=False)).context
    assert load_prepared(reader, "chat", shared).train_path.is_file()
    with duckdb.connect(str(tmp_path / "shared.duckdb")) as con:
        con.execute("UPDATE artifacts SET sha256 = ? WHERE uri = 'dataset://t/chat/train'", ["0" * 64])
    with pytest.raises(BlobIntegrityError, match="refused. Repair: prepare again"):
        load_prepared(reader, "chat", shared)


@pytest.mark.slow
def test_a_router_trained_on_one_worker_serves_on_another(s3_env, pg_server, tmp_path, monkeypatch):
    """A prepares, trains and routes; B (empty folder, S3 + PostgreSQL only) loads the same router through the
    routing pointer and routes without an oracle forward (every oracle loss is in the shared catalog)."""
    from test_route_flow import _profile

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from brainstacks_core.routing.run import route_profile, trained_router
    from brainstacks_core.training.run import train_profile
    from brainstacks_core.training.trained_run import load_run

    url = s3_env.make_bucket("routers") + "/bs"
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)
    profiles = []
    for side in ("A", "B"):
        (tmp_path / side / "configs").mkdir(parents=True)
        cfg = _profile(tmp_path / side / "configs")
        raw = yaml.safe_load(cfg.read_text())
        raw.update(name="routeds3", artifact_root=url, storage={"cache_dir": "cache"})
        cfg.write_text(yaml.safe_dump(raw))
        profiles.append(load_profile(cfg))
    a, b = profiles
    cat_a, cat_b = Catalog.for_context(a.context), Catalog.for_context(b.context)
    prepare_all(a.context, a.data, catalog=cat_a)
    train_profile(a.training_setup, catalog=cat_a)
    first = route_profile(a.routing_setup, "main", cat_a, progress=False)
    assert cat_a.latest("router://routeds3/main")["path"].startswith(f"{url}/blobs/sha256/")

    run = load_run(b.training_setup, "main", cat_b)  # the run, materialised from A's published tree
    router = trained_router(b.routing_setup, "main", run["model"], run["tokenizer"], cat_b)
    assert router is not None and router.version == first["summary"]["router_version"]
    again = route_profile(b.routing_setup, "main", cat_b, progress=False)
    assert again["summary"]["oracle"]["forwards"] == 0
    assert again["summary"]["router_version"] == first["summary"]["router_version"]
