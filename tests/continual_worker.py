"""Subprocess entry for the kill-and-resume test: ``python tests/continual_worker.py RUN_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_continual import CFG, _frames, _model, _tokenizer  # noqa: E402

from brainstacks_core.stacks.moe_lora import MoELoRAConfig  # noqa: E402
from brainstacks_core.training.continual import RunContext, run_continual  # noqa: E402

if __name__ == "__main__":
    data = _frames()
    tok = _tokenizer(data)
    ctx = RunContext("test", "main", Path(sys.argv[1]), base_fingerprint="fp")
    run_continual(_model(tok), tok, data, CFG, MoELoRAConfig(num_experts=4, rank=4, alpha=8), ctx)
    print("WORKER DONE")
