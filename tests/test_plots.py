"""Plots and the forgetting table from synthetic manifests: valid PNGs, every number shown."""

from __future__ import annotations

import math

import pytest

from brainstacks_core.reporting.plots import (
    forgetting_matrix,
    forgetting_table,
    plot_experiment1,
    plot_forgetting,
    plot_round_losses,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOMAINS = ["chat", "code", "math"]


def _manifest(shift: float) -> dict:
    """3 domains in order; forgetting rows only for domains trained by each stage."""
    base = {"chat": 3.1234567, "code": 2.9876543, "math": 3.3333333}
    forgetting = []
    for j, after in enumerate(DOMAINS):
        for i, dom in enumerate(DOMAINS[:j + 1]):
            forgetting.append({"after": after, "domain": dom, "isolated": 1.0 + 0.1 * i + shift,
                               "as_trained": 1.1 + 0.1 * i + 0.01 * j + shift,
                               "ungated": 1.2 + 0.1 * i + 0.05 * j + shift + 0.00004 * (i + j),
                               "base": base[dom]})
    domains = {}
    for i, dom in enumerate(DOMAINS):
        rounds = [
            {"round": 1, "status": "frozen", "loss_before": 3.0 - 0.1 * i, "loss_after": 1.5,
             "history": [[4, 2.2], [8, 1.7], [12, 1.5]], "train_log": []},
            {"round": 2, "status": "discarded" if dom == "math" else "frozen", "loss_before": 1.5,
             "loss_after": 1.51 if dom == "math" else 1.4, "history": [[4, 1.45], [8, 1.4]], "train_log": []},
        ]
        domains[dom] = {"status": "done", "rounds": rounds}
    return {"domains_order": DOMAINS, "domains": domains, "forgetting": forgetting}


def _assert_png(path, min_bytes: int = 5_000) -> None:
    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # atomic write left no temp file


def test_forgetting_matrix_layout():
    rows, stages, vals = forgetting_matrix(_manifest(0.0), "isolated")
    assert rows == stages == DOMAINS
    for i in range(3):
        for j in range(3):
            assert math.isnan(vals[i][j]) if i > j else vals[i][j] == pytest.approx(1.0 + 0.1 * i)


def test_plot_forgetting_and_table(tmp_path):
    manifests = {"null space": _manifest(0.0), "no null space": _manifest(0.5)}
    path = plot_forgetting(manifests, tmp_path / "figs" / "forgetting.png")
    assert path == tmp_path / "figs" / "forgetting.png"
    _assert_png(path)
    table = forgetting_table(manifests)
    for m in manifests.values():
        for r in m["forgetting"]:
            for mode in ("isolated", "as_trained", "ungated", "base"):
                assert f"{r[mode]:.4f}" in table, (mode, r)
    for label in manifests:
        for mode in ("isolated", "as_trained", "ungated"):
            assert f"**{label}: {mode}**" in table
    header = "| eval domain | after chat | after code | after math | base |"
    assert table.count(header) == 6
    math_row = next(line for line in table.splitlines() if line.startswith("| math |"))
    assert math_row.count("—") == 2  # math is untrained after chat and after code
    with pytest.raises(ValueError):
        plot_forgetting({}, tmp_path / "empty.png")


def test_plot_round_losses(tmp_path):
    _assert_png(plot_round_losses(_manifest(0.0), tmp_path / "rounds.png"))
    with pytest.raises(ValueError):
        plot_round_losses({"domains_order": [], "domains": {}, "forgetting": []}, tmp_path / "none.png")


def _exp1(reach):
    def arm(vals, params):
        curve = [[4 * (k + 1), v] for k, v in enumerate(vals)]
        return {"trainable_params": params, "val_curve": curve, "train_curve": curve, "aux_curve": [],
                "final_val_loss": vals[-1], "seconds": 1.0}

    return {"moe": arm([2.0, 1.4, 1.1, 1.0], 53_600), "lora": arm([2.1, 1.5, 1.3, 1.2], 50_500),
            "moe_reaches_lora_final_at": reach}


@pytest.mark.parametrize("reach", [12, None])
def test_plot_experiment1(tmp_path, reach):
    _assert_png(plot_experiment1(_exp1(reach), tmp_path / "exp1.png"))


def _version(path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns  # atomic_write replaces the file: a redraw gives a new inode


def test_an_unchanged_plot_is_not_redrawn_and_a_changed_input_redraws_it(tmp_path):
    """A re-run keeps each PNG byte for byte (inputs' hash in its tEXt chunk); any plotted value changes it."""
    import copy

    import torch

    from brainstacks_core.files import png_text
    from brainstacks_core.reporting.routing_plots import plot_routing_heatmap

    m = _manifest(0.0)
    weights = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    draws = {
        "forgetting": lambda mm, w, p: plot_forgetting({"null space": mm}, p),
        "rounds": lambda mm, w, p: plot_round_losses(mm, p),
        "exp1": lambda mm, w, p: plot_experiment1({**_exp1(12), "moe_reaches_lora_final_at": mm["reach"]}, p),
        "routing": lambda mm, w, p: plot_routing_heatmap(["chat", "code"], w, DOMAINS, p),
    }
    m["reach"] = 12
    for name, draw in draws.items():
        path = tmp_path / f"{name}.png"
        draw(m, weights, path)
        first, data = _version(path), path.read_bytes()
        assert png_text(path) is not None, name
        draw(copy.deepcopy(m), weights.clone(), path)  # equal inputs, other objects
        assert _version(path) == first and path.read_bytes() == data, f"{name} was redrawn on equal inputs"

    changed = copy.deepcopy(m)
    changed["forgetting"][0]["isolated"] += 0.25  # one cell of the forgetting matrix
    changed["domains"]["code"]["rounds"][0]["history"][1][1] = 1.9  # one point of a loss curve
    changed["reach"] = None  # Experiment 1 no longer marks a step
    for name, draw in draws.items():
        path = tmp_path / f"{name}.png"
        before, key = _version(path), png_text(path)
        w = weights if name != "routing" else torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])
        draw(changed, w, path)
        _assert_png(path)
        assert _version(path) != before and png_text(path) != key, f"{name} kept a stale figure"
    # a file that is not this figure's (no chunk, other bytes) is drawn over
    path = tmp_path / "rounds.png"
    path.write_bytes(PNG_MAGIC + b"junk")
    plot_round_losses(changed, path)
    _assert_png(path)
