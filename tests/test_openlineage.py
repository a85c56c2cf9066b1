"""OpenLineage run events of the flows (issue 12, item 6): START/COMPLETE/FAIL with versioned datasets,
read back with openlineage's own classes; whole lines under concurrent writers; the Marquez HTTP transport;
the Prefect asset events of a completed flow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401 - a fixture

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.config import LineageConfig
from brainstacks_core.lineage.openlineage import LineageDataset, OpenLineageEmitter
from brainstacks_core.lineage.openlineage_io import read_events

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
SPLITS = ("train", "val", "test", "router")


def test_prepare_flow_emits_start_then_complete_with_dataset_versions(harness, tmp_path, asserting_events_worker):  # noqa: F811
    from openlineage.client.event_v2 import RunEvent, RunState

    from flows.prepare_data import prepare_data

    rows = prepare_data(config_path=DEMO, domain="math", artifact_root=str(tmp_path))
    cat = Catalog(tmp_path / "demo" / "catalog.duckdb")
    train = cat.latest("dataset://demo/math/train")
    events = read_events(tmp_path / "demo" / "lineage" / "openlineage.jsonl")  # parsed by openlineage's classes
    assert all(isinstance(e, RunEvent) for e in events)
    assert [e.eventType for e in events] == [RunState.START, RunState.COMPLETE]
    start, done = events
    assert start.run.runId == done.run.runId == train["flow_run_id"]  # the Prefect flow run id
    assert done.job.name == "prepare-data" and done.job.namespace == "brainstacks.demo"
    outs = {d.name: d.facets["version"].datasetVersion for d in done.outputs}
    clf = cat.latest("classifier://demo/decontamination")  # the job also fits the decontamination classifier
    assert outs.pop(clf["uri"]) == clf["version"]
    assert outs == {f"dataset://demo/math/{s}": f"{rows['math']['version']}-{s}" for s in SPLITS}
    ins = {d.name: d.facets["version"].datasetVersion for d in done.inputs}
    # what the dataset came from, plus the sources the classifier was fitted on (the job read them all)
    assert ins == ({a["uri"]: a["version"] for a in cat.upstream(train["version"])}
                   | {a["uri"]: a["version"] for a in cat.upstream(clf["version"])})
    assert any(u.startswith("generated://math") for u in ins) and "eval://math_heldout" in ins
    raw = json.loads((tmp_path / "demo" / "lineage" / "openlineage.jsonl").read_text().splitlines()[1])
    stats = {d["name"]: d["outputFacets"]["outputStatistics"]["rowCount"] for d in raw["outputs"]
             if d["name"].startswith("dataset://")}  # the classifier output carries no row count
    assert stats == {f"dataset://demo/math/{s}": rows["math"][s] for s in SPLITS}
    assert raw["run"]["facets"]["processing_engine"]["name"] == "prefect"

    # the asset events prefect.assets.materialize emits: one materialization per output, inputs related
    asserting_events_worker.drain()
    emitted = asserting_events_worker._client.events
    mats = {e.resource.id: e for e in emitted if e.event == "prefect.asset.materialization.succeeded"}
    assert set(mats) == set(outs) | {clf["uri"]}
    assert mats["dataset://demo/math/train"].payload["version"] == train["version"]
    related = {r.id for r in mats["dataset://demo/math/train"].related if r.role == "asset"}
    assert "eval://math_heldout" in related and any(r.startswith("brainstacks://generated/math") for r in related)


def test_failing_flow_emits_fail_with_the_error(harness, tmp_path):
    from openlineage.client.event_v2 import RunState

    from flows.prepare_data import prepare_data

    with pytest.raises(ValueError, match="unknown domain"):
        prepare_data(config_path=DEMO, domain="nope", artifact_root=str(tmp_path))
    events = read_events(tmp_path / "demo" / "lineage" / "openlineage.jsonl")
    assert [e.eventType for e in events] == [RunState.START, RunState.FAIL]
    err = events[1].run.facets["errorMessage"]
    assert err.message.startswith("ValueError: unknown domain 'nope'") and err.programmingLanguage == "python"
    assert "prepare_data" in err.stackTrace and events[0].run.runId == events[1].run.runId


_WRITER = """
import json, sys, time
from pathlib import Path
from brainstacks_core.lineage.config import LineageConfig
from brainstacks_core.lineage.openlineage import LineageDataset, OpenLineageEmitter
from brainstacks_core.lineage.openlineage_io import append_line
store, tag = Path(sys.argv[1]), sys.argv[2]
em = OpenLineageEmitter(LineageConfig(), store, "demo")
big = [LineageDataset(uri=f"dataset://demo/{tag}/{i}/" + "x" * 400, version=f"v{i}", kind="dataset", rows=i)
       for i in range(300)]  # ~300 KB per event: several bounded writes per line
line = json.dumps({"job": {"name": f"raw-{tag}"}, "pad": tag * 300_000})  # the same append, without building
(store / f"ready-{tag}").touch()
while not (store / "go").exists():  # both start writing at once
    time.sleep(0.01)
for i in range(68):
    if i % 8 == 0:
        em.emit("COMPLETE", f"writer-{tag}", None, big, big)
    else:
        append_line(em.file, line)
"""


def test_two_processes_emitting_at_once_write_whole_lines(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), tag], cwd=ROOT) for tag in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{t}").exists() for t in ("a", "b")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = (tmp_path / "lineage" / "openlineage.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    events = [json.loads(line) for line in lines[:-1]]  # a torn or interleaved line fails here
    names = sorted(e["job"]["name"] for e in events)
    assert names == ["raw-a"] * 59 + ["raw-b"] * 59 + ["writer-a"] * 9 + ["writer-b"] * 9
    assert all(len(e["inputs"]) == len(e["outputs"]) == 300 for e in events if e["job"]["name"].startswith("w"))


class _Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


def test_marquez_url_gets_every_event_and_a_dead_endpoint_never_stops_the_file(tmp_path):
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        em = OpenLineageEmitter(LineageConfig(marquez_url=url), tmp_path, "demo")
        d = LineageDataset(uri="dataset://demo/math/train", version="abc-train", kind="dataset", rows=3)
        ev = em.emit("COMPLETE", "prepare-data", None, [], [d])
        assert [p for p, _ in _Collector.received] == ["/api/v1/lineage"]
        body = _Collector.received[0][1]
        assert body["run"]["runId"] == ev.run.runId
        assert body["outputs"][0]["facets"]["version"]["datasetVersion"] == "abc-train"
        # the file is the record: a failed write raises even though Marquez took the event
        (tmp_path / "blocked").write_text("a file, not a folder")
        broken = OpenLineageEmitter(LineageConfig(marquez_url=url, openlineage_file=str(tmp_path / "blocked" / "x")),
                                    tmp_path, "demo")
        with pytest.raises(OSError):
            broken.emit("START", "prepare-data")
    finally:
        server.shutdown()
        server.server_close()
    dead = OpenLineageEmitter(LineageConfig(marquez_url=url, http_timeout_s=0.5), tmp_path, "demo")
    dead.emit("START", "prepare-data")  # nothing listens any more: logged, the file is still written
    assert len(read_events(tmp_path / "lineage" / "openlineage.jsonl")) == 2


def test_profile_lineage_section_sets_file_and_switch(tmp_path):
    import yaml

    from brainstacks_core.profile import load_profile

    raw = yaml.safe_load(Path(DEMO).read_text())
    raw["lineage"] = {"openlineage_file": "ol/events.jsonl", "namespace": "team"}
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "p.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    profile = load_profile(cfg, artifact_root=tmp_path / "art")
    em = OpenLineageEmitter(profile.lineage, profile.store, profile.name)
    assert em.file == tmp_path / "art" / "demo" / "ol" / "events.jsonl" and em.job_namespace == "team.demo"
    off = OpenLineageEmitter(profile.lineage.model_copy(update={"openlineage": False}), profile.store, profile.name)
    assert off.emit("START", "prepare-data") is None and not off.file.exists()


def _facet_schema(url: str) -> dict:
    """The shipped JSON Schema a custom facet's ``_schemaURL`` names (package data, read offline)."""
    from brainstacks_core.lineage.openlineage import SCHEMA_BASE, SCHEMA_DIR

    assert url.startswith(SCHEMA_BASE), url
    file, _, pointer = url[len(SCHEMA_BASE):].partition("#")
    schema = json.loads((SCHEMA_DIR / file).read_text())
    assert schema["$id"] == url.split("#")[0] and pointer == f"/$defs/{file[:-5]}"
    return schema


def _validate_custom_facets(raw_events: list[dict]) -> int:
    """Validate every ``brainstacks`` facet (run and dataset) against the JSON Schema its _schemaURL names."""
    import jsonschema
    from referencing import Registry, Resource

    n = 0
    for ev in raw_events:
        facets = [ev["run"]["facets"]["brainstacks"]]
        facets += [d["facets"]["brainstacks"] for d in ev.get("inputs", []) + ev.get("outputs", [])]
        for facet in facets:
            schema = _facet_schema(facet["_schemaURL"])
            jsonschema.Draft202012Validator.check_schema(schema)
            registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
            jsonschema.Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=registry).validate(facet)
            n += 1
    return n


def test_start_names_the_runs_known_inputs_and_custom_facets_match_their_schemas(harness, tmp_path):
    import jsonschema
    from openlineage.client.event_v2 import RunEvent

    from brainstacks_core.data.pipeline import input_uris
    from brainstacks_core.lineage.openlineage import SCHEMA_DIR
    from brainstacks_core.profile import load_profile
    from flows.prepare_data import prepare_data

    profile = load_profile(DEMO, tmp_path)
    expected = input_uris(profile.data)
    assert any(u.startswith("generated://math") for u in expected) and "eval://math_heldout" in expected
    prepare_data(config_path=DEMO, domain="math", artifact_root=str(tmp_path))
    prepare_data(config_path=DEMO, domain="math", artifact_root=str(tmp_path))
    path = tmp_path / "demo" / "lineage" / "openlineage.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["eventType"] for e in raw] == ["START", "COMPLETE", "START", "COMPLETE"]
    first, second = raw[0], raw[2]
    # before the first preparation the catalog knows none of them: named, no version yet
    assert [d["name"] for d in first["inputs"]] == expected
    assert all("version" not in d["facets"] for d in first["inputs"]) and first["outputs"] == []
    # the second START carries each input at the version the first run recorded
    cat = Catalog(tmp_path / "demo" / "catalog.duckdb")
    versions = {d["name"]: d["facets"].get("version", {}).get("datasetVersion") for d in second["inputs"]}
    assert list(versions) == expected
    assert versions == {u: (cat.latest(u) or {}).get("version") for u in expected}
    done_inputs = {d["name"]: d["facets"]["version"]["datasetVersion"] for d in raw[1]["inputs"]}
    assert {u: v for u, v in versions.items() if u in done_inputs} == done_inputs and done_inputs
    assert all(isinstance(e, RunEvent) for e in read_events(path))  # still parsed by openlineage's own classes

    # every custom facet validates against the JSON Schema file its _schemaURL names (shipped as package data)
    assert _validate_custom_facets(raw) == 4 + sum(len(e["inputs"]) + len(e["outputs"]) for e in raw)
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == ["BrainstacksDatasetFacet.json",
                                                                  "BrainstacksRunFacet.json"]
    bad = {**raw[1]["outputs"][0]["facets"]["brainstacks"]}
    del bad["kind"]
    with pytest.raises(jsonschema.ValidationError, match="'kind' is a required property"):
        _validate_custom_facets([{"run": raw[1]["run"], "outputs": [{"facets": {"brainstacks": bad}}]}])


def test_asset_keys_derive_from_the_catalog_uri_in_one_place():
    """asset_key (core, no Prefect) gives a key Prefect's Asset accepts for any catalog URI: the URI itself
    when valid, else brainstacks://<scheme>/<rest>; the asset events use exactly that key."""
    from prefect.assets import Asset

    from brainstacks_core.lineage.uris import asset_key
    from tasks import lineage as tl

    valid = ["dataset://demo/math/train", "stack://demo/main/chat/r1", "eval://math_heldout", "base://demo"]
    for uri in valid:
        assert asset_key(uri) == uri == Asset(key=uri).key
    odd = {"generated://math?rows=400&seed=0": "brainstacks://generated/math/rows/400/seed/0",
           "routing-eval://demo/main": "brainstacks://routing-eval/demo/main",
           "local:../shared/data/x y.json": "brainstacks://local/../shared/data/x/y.json"}
    for uri, key in odd.items():
        with pytest.raises(ValueError):
            Asset(key=uri)
        assert asset_key(uri) == key == Asset(key=key).key
    long = "dataset://demo/" + "x" * 600
    assert len(asset_key(long)) == 512 and Asset(key=asset_key(long)).key == asset_key(long)
    assert asset_key(long) != asset_key(long + "y")  # cut with a hash: two long URIs stay two assets
    assert tl.asset_key is asset_key  # the Prefect events take it from the core: one place
