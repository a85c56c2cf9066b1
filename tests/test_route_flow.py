"""The train-router flow on a tiny trained run: oracle -> router -> routed losses, cached (issue 10, items 2-5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.routing.run import trained_router
from brainstacks_core.training.run import train_profile

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["name"] = "routed"
    raw["data"]["domains"] = ["chat", "math"]
    raw["data"]["sources"] = {"chat": [{"kind": "generated", "generator": "chat", "rows": 80}],
                              "math": [{"kind": "generated", "generator": "math", "rows": 80}]}
    raw["data"]["max_rows_per_domain"] = 80
    raw["data"]["router_fraction"] = 0.25
    raw["base"]["tiny"].update(vocab_size=512, hidden_size=32, intermediate_size=64, pretrain_steps=5,
                               pretrain_batch_size=4, seq_len=64)
    raw["moe"].update(rank=4)
    raw["training"].update(max_rounds=1, basis={"k": 4}, eval_rows=8, null_space_val_rows=8, ablation=False,
                           sft={"max_steps": 3, "eval_steps": 3, "batch_size": 8, "learning_rate": 0.01,
                                "warmup_steps": 0, "max_length": 64})
    raw["router"] = {"max_length": 64, "hidden": 32, "heads": 2, "epochs": 2, "exhaustive_sample": 4}
    raw.pop("eval", None)
    path = tmp_path / "routed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_train_router_flow_is_cached_and_records_lineage(tmp_path, harness):
    from flows.train_router import train_router

    cfg = _profile(tmp_path)
    profile = load_profile(cfg, artifact_root=tmp_path / "art")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    train_profile(profile.training_setup, catalog=cat)

    first = train_router(config_path=str(cfg), artifact_root=str(tmp_path / "art"))
    o = first["summary"]["oracle"]
    assert o["forwards"] > 0 and o["computed"] > 0 and o["regret"]["n"] == 4
    md = first["markdown"]
    for part in ("Winning combinations", "meta-router", "linear probe", "nominal-domain label", "| routed |",
                 "routed ≤ ungated", "| chat |", "| math |"):
        assert part in md, part
    assert all(Path(p).exists() for p in first["plots"])
    # the routing progress artifact ends at 100 % in its final state
    from test_training_artifacts import _artifacts

    prog = _artifacts(["routing-routed-main"])["routing-routed-main"]
    assert prog.type == "progress" and float(prog.data) == pytest.approx(100.0), prog.data
    assert "done: oracle 120 losses computed" in prog.description, prog.description  # the final state

    # lineage: the routed evaluation depends on the router, the oracle, the stacks and the router/test data
    ev = cat.latest("routing-eval://routed/main")
    up = {a["uri"] for a in cat.upstream(ev["version"])}
    assert "router://routed/main" in up and "oracle://routed/main" in up
    assert any(u.startswith("stack://") for u in up), up
    assert {"dataset://routed/chat/router", "dataset://routed/math/router", "dataset://routed/math/train"} <= up

    # a re-run: no oracle forward, the same router
    again = train_router(config_path=str(cfg), artifact_root=str(tmp_path / "art"))
    assert again["summary"]["oracle"]["forwards"] == 0 and again["summary"]["oracle"]["computed"] == 0
    assert again["summary"]["router_version"] == first["summary"]["router_version"]
    assert again["markdown"] == md and again["plots"] == first["plots"]
    # ... served from the routing's result cache: no model loaded (the computed path also returns the router)
    from brainstacks_core.routing.run import route_profile

    hit = route_profile(profile.routing_setup, "main", cat, progress=False)
    assert "router" not in hit and hit["markdown"] == md

    # the run's router, as generate and routed evaluation load it: floor and gate applied
    from brainstacks_core.evaluation.run import load_run

    run = load_run(profile.training_setup, "main", cat)
    router = trained_router(profile.routing_setup, "main", run["model"], run["tokenizer"], cat)
    assert router is not None and router.version == first["summary"]["router_version"]
    w = router.domain_weights(["What is 3 plus 4?", "Tell me about your day."])  # [2, D]
    chat = router.domains.index("chat")
    assert (w[:, chat] >= 0.2 - 1e-6).all()
    assert ((w == 0) | (w >= profile.router.gate_threshold)).all()

    # last (it records a newer router): any input of the key invalidates the cache; another chat floor
    # routes again and says so in the report
    setup = profile.routing_setup
    other = setup.model_copy(update={"router": setup.router.model_copy(update={"chat_floor": 0.3})})
    redo = route_profile(other, "main", cat, progress=False)
    assert "router" in redo and "chat floor 0.3" in redo["markdown"] and redo["markdown"] != md
