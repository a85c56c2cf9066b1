"""What the continual-training flow shows in the Prefect UI (issue 12, items 5-6), read back through the
Prefect client: the progress artifact, a model card per frozen stack (also beside the stack file), the
table of stacks, the plots inlined as small PNG data URIs, and the run's OpenLineage events."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from test_training_run import _mini_profile

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.openlineage_io import job_events, read_events
from brainstacks_core.profile import load_profile
from safetensors import safe_open

from brainstacks_core.reporting.model_card import card_path
from brainstacks_core.training.run import current_run_dir


def _artifacts(keys: list[str]) -> dict:
    """The latest artifact of each key, through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    out: dict = {}
    for a in sorted(arts, key=lambda a: a.created):
        out[a.key] = a
    return out


@pytest.mark.slow
def test_training_flow_progress_model_cards_stacks_table_plots_and_lineage(harness, tmp_path):
    from PIL import Image

    from flows.continual_training import continual_training

    cfg = _mini_profile(tmp_path)
    root = tmp_path / "artifacts"
    profile = load_profile(cfg, artifact_root=root)
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    continual_training(config_path=str(cfg), artifact_root=str(root))
    manifest = json.loads((current_run_dir(profile.context, "main") / "manifest.json").read_text())
    rounds = [(d, r) for d in manifest["domains_order"] for r in manifest["domains"][d]["rounds"]]
    frozen = [(d, r) for d, r in rounds if r["status"] == "frozen"]
    assert frozen
    card_keys = {r["stack_id"]: f"model-card-mini-main-{r['stack_id'].replace('_', '-').lower()}" for _, r in frozen}
    arts = _artifacts(["training-mini-main-chat", "training-mini-main-math", "stacks-mini-main",
                       "training-mini-main", *card_keys.values()])

    # progress: created at 0 %, updated during training, and ending in the domain's final state
    for dom in ("chat", "math"):
        prog = arts[f"training-mini-main-{dom}"]
        rounds_d = manifest["domains"][dom]["rounds"]
        n_frozen = sum(r["status"] == "frozen" for r in rounds_d)
        assert prog.type == "progress" and float(prog.data) == pytest.approx(100.0), (dom, prog.data)
        assert f"**{dom}** done: {n_frozen} frozen of {len(rounds_d)} rounds" in prog.description, prog.description

    # one model card per frozen stack: the artifact is the file beside the stack
    for dom, r in frozen:
        md = arts[card_keys[r["stack_id"]]].data
        assert md == card_path(r["file"]).read_text()
        entry = manifest["domains"][dom]
        train = cat.get(entry["train_version"])
        assert f"| train | `{entry['train_version']}` | {train['metadata']['counts']['train']} |" in md
        assert f"`{manifest['base_fingerprint']}`" in md and f"`{r['version']}`" in md
        assert f"| trained by flow run | `{cat.get(r['version'])['flow_run_id']}` |" in md
        assert f"| code version | `{cat.get(r['version'])['code_version']}` |" in md
        moe = json.loads(safe_open(r["file"], framework="pt").metadata()["moe_config"])  # from the file's header
        assert f"| MoE-LoRA | rank {moe['rank']}, {moe['num_experts']} experts, top-{moe['top_k']}" in md
        if dom == "math":
            chat_stacks = [x["version"] for d, x in frozen if d == "chat"]
            assert all(f"`{v}`" in md for v in chat_stacks) and entry["null_space"]["version"] in md
            assert re.search(r"K = 4 directions per module", md)
        elif r["round"] == 1:  # later chat rounds (an RL stack included) follow chat's own earlier stacks
            assert "none: the first stack of the run" in md

    # the table of stacks trained
    table = json.loads(arts["stacks-mini-main"].data)
    assert [(t["domain"], t["round"], t["status"], t["version"]) for t in table] == \
        [(d, r["round"], r["status"], r.get("version")) for d, r in rounds]
    assert [t["val_loss"] for t in table] == [round(r["loss_after"], 4) for _, r in rounds]

    # the plots inside the markdown artifact: small PNG data URIs, no file paths left
    md = arts["training-mini-main"].data
    images = re.findall(r"!\[([\w-]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert [name for name, _ in images] == ["forgetting-main", "rounds-main"]
    for _, b64 in images:
        png = base64.b64decode(b64)
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.width <= 720
        assert len(png) < 60_000, len(png)
    assert ".png" not in md and len(md.encode()) < 150_000

    # OpenLineage: the run's stacks as outputs (catalog versions), the data it read as inputs
    events = job_events(read_events(profile.store / "lineage" / "openlineage.jsonl"), "continual-training")
    assert [e.eventType.value for e in events] == ["START", "COMPLETE"]
    outs = {d.name: d.facets["version"].datasetVersion for d in events[1].outputs}
    assert {f"stack://mini/main/{d}/r{r['round']}": r["version"] for d, r in frozen}.items() <= outs.items()
    ins = {d.name: d.facets["version"].datasetVersion for d in events[1].inputs}
    for dom in ("chat", "math"):
        assert ins[f"dataset://mini/{dom}/train"] == manifest["domains"][dom]["train_version"]
        assert ins[f"dataset://mini/{dom}/val"] == manifest["domains"][dom]["val_version"]

    # a second run trains nothing; its progress artifacts still end final (never "starting"), and its
    # lineage still names the data it read (train, val and test splits)
    continual_training(config_path=str(cfg), artifact_root=str(root))
    again = _artifacts(["training-mini-main-chat", "training-mini-main-math"])
    for dom in ("chat", "math"):
        assert float(again[f"training-mini-main-{dom}"].data) == pytest.approx(100.0)
        assert "starting" not in again[f"training-mini-main-{dom}"].description
        assert again[f"training-mini-main-{dom}"].id != arts[f"training-mini-main-{dom}"].id  # the second run's
    events = job_events(read_events(profile.store / "lineage" / "openlineage.jsonl"), "continual-training")
    assert [e.eventType.value for e in events] == ["START", "COMPLETE"] * 2
    ins = {d.name: d.facets["version"].datasetVersion for d in events[3].inputs}
    for dom in ("chat", "math"):
        version = manifest["domains"][dom]["train_version"].rsplit("-", 1)[0]
        assert {f"dataset://mini/{dom}/{s}": f"{version}-{s}" for s in ("train", "val", "test")}.items() <= ins.items()
