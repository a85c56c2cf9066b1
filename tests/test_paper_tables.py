"""The paper's Tables 1-4 and Figs. 4-10 in the report, on a real tiny run (two domains, with and without
null space, Experiment 1): columns, numbers against the manifests, subspace data recomputed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from brainstacks_core.files import png_is_current, png_text
from test_training_run import _mini_profile as training_mini_profile

ROOT = Path(__file__).resolve().parents[1]


def _mini_profile(tmp_path: Path) -> Path:
    """tests/test_training_run.py's two tiny domains, no RL, two rounds."""
    return training_mini_profile(tmp_path, max_rounds=2, rl={})


def _eval_doc(store: Path) -> dict:
    """A results.json as ``evaluation.record.record_evaluation`` writes it (base and routed on two tasks)."""
    def scores(acc, per_token=None):
        out = {"acc,none": {"value": acc, "stderr": 0.05}}
        if per_token is not None:
            out["acc_mean_per_token (paper's score),none"] = {"value": per_token, "stderr": 0.05}
        return out

    doc = {"version": "e1", "modes": ["base", "routed"], "skipped": {}, "summary": {
        "arc_easy": {"base": {"scores": scores(0.5, 0.51), "n": 20}, "routed": {"scores": scores(0.6, 0.515), "n": 20}},
        "gsm8k": {"base": {"scores": {"exact_match,strict": {"value": 0.30, "stderr": 0.1}}, "n": 10},
                  "routed": {"scores": {"exact_match,strict": {"value": 0.25, "stderr": 0.1}}, "n": 10}}},
        "comparisons": [{"task": "gsm8k", "metric": "exact_match,strict", "a": "base", "b": "routed"}]}
    path = store / "eval" / "main" / "e1" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return doc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Prepared data, runs ``main`` and ``no-null-space``, Experiment 1, an evaluation, and the report (~40 s)."""
    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from brainstacks_core.reporting.report import build_paper_report, build_report
    from brainstacks_core.training.run import run_experiment1_for_profile, train_profile

    tmp = tmp_path_factory.mktemp("paper")
    profile = load_profile(_mini_profile(tmp), artifact_root=tmp / "artifacts")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    ns = train_profile(profile.training_setup, catalog=cat)
    nons = train_profile(profile.training_setup, "no-null-space", null_space=False, catalog=cat)
    exp1 = run_experiment1_for_profile(profile.training_setup, cat)
    doc = _eval_doc(profile.store)
    build_report(profile.context, ["main", "no-null-space"], cat)  # the training section
    report = build_paper_report(profile.context, ["main", "no-null-space"], cat, setup=profile.training_setup)
    return {"profile": profile, "catalog": cat, "ns": ns, "nons": nons, "exp1": exp1, "eval": doc, "report": report}


def _table(md: str, header: str) -> list[dict]:
    """The markdown table whose header line starts with ``header``, as dicts."""
    lines = md.split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith(header))
    cols = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, [c.strip() for c in line.strip("|").split("|")])))
    return rows


def _close(cell: str, value: float, digits: int = 4) -> bool:
    return abs(float(cell) - value) <= 0.5 * 10 ** -digits + 1e-12


@pytest.mark.slow
def test_tables_have_the_papers_columns_and_the_stored_numbers(trained):
    md = trained["report"]["paper"]["markdown"]
    report = trained["report"]["markdown"]  # the one report: training section, then the paper's (plots as links)
    assert "## Paper tables and figures" in report and report.index("## Rounds") < report.index("## Paper")
    assert "Not available" not in md

    t1 = _table(md, "| method | params (M) | train loss | val loss | time (min) |")
    exp1 = trained["exp1"]
    assert [r["method"] for r in t1] == ["Single LoRA (r=64)", "MoE-LoRA (4 × r=4)"]
    for row, arm in zip(t1, (exp1["lora"], exp1["moe"])):
        assert _close(row["val loss"], arm["final_val_loss"]) and _close(row["train loss"], arm["train_curve"][-1][1])
        assert math.isclose(float(row["params (M)"]) * 1e6, arm["trainable_params"], rel_tol=1e-3)
        assert _close(row["time (min)"], arm["seconds"] / 60, 2)

    t2 = _table(md, "| domain | stacks | val losses (per round) | final loss | time (min) |")
    ns = trained["ns"]
    assert [r["domain"] for r in t2] == ns["domains_order"]
    for row in t2:
        rounds = ns["domains"][row["domain"]]["rounds"]
        kept = [r for r in rounds if r["status"] == "frozen"]
        assert int(row["stacks"]) == len(kept)
        cells = row["val losses (per round)"].split(", ")
        assert len(cells) == len(rounds) and all(_close(c.rstrip("*"), r["loss_after"]) for c, r in zip(cells, rounds))
        assert _close(row["final loss"], kept[-1]["loss_after"])
        assert _close(row["time (min)"], sum(r["seconds"] for r in rounds) / 60, 2)

    t3 = _table(md, "| eval domain | after math (NoNS → NS) |")
    ung = {run: {(r["domain"], r["after"]): r["ungated"] for r in trained[run]["forgetting"]} for run in ("ns", "nons")}
    assert [r["eval domain"] for r in t3] == ["chat", "math"]
    for row in t3:
        before, after = row["after math (NoNS → NS)"].split(" → ")
        assert _close(before, ung["nons"][row["eval domain"], "math"]) and _close(after, ung["ns"][row["eval domain"], "math"])
    deltas = _table(md, "| eval domain | after math Δ (NS − NoNS) |")
    for row in deltas:
        d = row["eval domain"]
        assert _close(row["after math Δ (NS − NoNS)"], ung["ns"][d, "math"] - ung["nons"][d, "math"])

    t4 = {r["benchmark"].split(" ")[0]: r for r in _table(md, "| benchmark | base | routed | delta |")}
    assert set(t4) == {"arc_easy", "gsm8k"}
    assert (t4["arc_easy"]["base"], t4["arc_easy"]["routed"], t4["arc_easy"]["delta"]) == ("0.510", "0.515", "+0.005")
    assert "acc_mean_per_token" in t4["arc_easy"]["benchmark"]  # the paper's score where the task has it
    assert (t4["gsm8k"]["base"], t4["gsm8k"]["routed"], t4["gsm8k"]["delta"]) == ("0.300", "0.250", "-0.050")


def _by_hand(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(path)).items():
        layer, part = key.rsplit("/", 1)
        layers.setdefault(layer, {})[part] = t
    return layers


@pytest.mark.slow
def test_subspace_figures_data_match_a_hand_computation(trained):
    from brainstacks_core.reporting import paper_figures as F
    from brainstacks_core.reporting.paper import subspace_files
    from brainstacks_core.stacks.inject import only_stacks, stacked_layers
    from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss
    from brainstacks_core.training.trained_run import load_run
    from brainstacks_core.reporting.subspace import load_subspace

    profile, ns = trained["profile"], trained["ns"]
    files = subspace_files(profile.context, "main")
    subs = {d: load_subspace(p) for d, p in files.items()}
    raw = {d: _by_hand(p) for d, p in files.items()}
    k = profile.training.basis.k

    # Fig. 9: energy shares of the stored singular values, mean over layers
    for dom, curve in F.spectra(subs).items():
        shares = torch.stack([(t["singular_values"].double() ** 2 / (t["singular_values"].double() ** 2).sum())
                              for t in raw[dom].values()])  # [layers, k]
        torch.testing.assert_close(torch.tensor(curve, dtype=torch.float64), shares.mean(0))
        assert len(curve) == k

    # Fig. 10: per-layer overlap = mean cosine of the principal angles = sqrt(eig(M M^T)), M = Va Vb^T
    overlaps = F.layer_overlaps(subs)[("chat", "math")]
    for layer, t in raw["chat"].items():
        m = t["directions"].double() @ raw["math"][layer]["directions"].double().T
        cos = torch.linalg.eigvalsh(m @ m.T).clamp_min(0).sqrt()
        assert math.isclose(overlaps[layer], cos.mean().item(), abs_tol=1e-5)
    assert max(overlaps.values()) < 1e-3  # with null space, math's stacks write orthogonally to chat's directions
    nons = {d: load_subspace(p) for d, p in subspace_files(profile.context, "no-null-space").items()}
    assert max(F.layer_overlaps(nons)[("chat", "math")].values()) > 0.05  # without it they do not

    # chat's measured directions span what math's null space (the basis file training wrote) protects
    basis = load_file(ns["domains"]["math"]["null_space"]["file"])
    for layer, t in raw["chat"].items():
        v, b = t["directions"].double(), basis[layer].double()
        torch.testing.assert_close(v.T @ v, b.T @ b, atol=1e-4, rtol=0)

    # singular values: an SVD of chat's own stacks' deltas on its first validation rows, by hand
    run = load_run(profile.training_setup, "main", trained["catalog"])
    model, tok = run["model"], run["tokenizer"]
    from brainstacks_core.training.run import load_domain_data

    (chat,) = load_domain_data(profile.context, ["chat"], trained["catalog"])
    layer_name = next(iter(raw["chat"]))
    layer = stacked_layers(model)[layer_name]
    rows = []
    hook = layer.register_forward_hook(lambda m, i, o: rows.append(i[0].reshape(-1, m.in_features)))
    masks = []
    with torch.no_grad(), only_stacks(model, run["domain_stacks"]["chat"]):
        examples = tokenize_for_loss(tok, chat.val.head(profile.training.null_space_val_rows),
                                     profile.training.sft.max_length)
        for b in iter_batches(examples, profile.training.sft.batch_size, tok.pad_token_id or 0):
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            masks.append(b["attention_mask"].reshape(-1).bool())
        hook.remove()
        x = torch.cat(rows)[torch.cat(masks)]
        d = layer._frozen_delta(x, tuple(run["domain_stacks"]["chat"]))
    torch.testing.assert_close(raw["chat"][layer_name]["singular_values"], torch.linalg.svdvals(d.float())[:k],
                               atol=1e-5, rtol=1e-4)

    # Fig. 7: each stack's mean gates sum to 1 (top-k softmax); the figure's rows are their means
    doms, usage = F.expert_usage(subs)
    for dom, row in zip(doms, usage):
        per = torch.cat([t["expert_usage"] for t in raw[dom].values()])  # [layers * S, E]
        torch.testing.assert_close(per.sum(1), torch.ones(per.shape[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(row), per.mean(0))


@pytest.mark.slow
def test_figures_are_pngs_and_a_rerun_redraws_nothing(trained, monkeypatch):
    from PIL import Image

    import brainstacks_core.training.trained_run as trained_run
    from brainstacks_core.reporting.report import build_paper_report

    pngs = [Path(p) for p in trained["report"]["paper"]["plots"]]
    assert {p.name for p in pngs} == {"fig4-5-ungated.png", "fig6-ns-effect.png", "fig7-experts.png",
                                      "fig8-overlap.png", "fig9-spectra.png", "fig10-layer-overlap.png"}
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
        assert png_is_current(p, png_text(p)) and f"paper/{p.name})" in trained["report"]["markdown"]
    stamps = {p: p.stat().st_mtime_ns for p in pngs}

    def no_model(*_a, **_k):
        raise AssertionError("the subspace files are current: the rerun must not load the run")

    monkeypatch.setattr(trained_run, "load_run", no_model)
    profile = trained["profile"]
    again = build_paper_report(profile.context, ["main", "no-null-space"], trained["catalog"],
                               setup=profile.training_setup)
    assert again["paper"]["markdown"] == trained["report"]["paper"]["markdown"]
    assert {p: p.stat().st_mtime_ns for p in pngs} == stamps


def test_missing_inputs_give_one_line_each(tmp_path):
    from brainstacks_core.profile import load_profile
    from brainstacks_core.reporting.paper import paper_section

    profile = load_profile(_mini_profile(tmp_path), artifact_root=tmp_path / "artifacts")
    md, pngs = paper_section(profile.context, ["main"], setup=profile.training_setup)
    assert pngs == []
    missing = [line for line in md.split("\n") if line.startswith("Not available: ")]
    assert len(missing) >= 7, md  # Tables 1-4, Figs. 4/5, Fig. 6, subspaces of both runs
    assert any("brainstacks eval" in line for line in missing) and any("ablation" in line for line in missing)
