"""A two-domain (chat, code) local-file profile for data-path tests; the chat rows are the caller's."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_two_domain_profile(tmp_path: Path, chat_rows: list[dict], code_rows: int) -> Path:
    """Write chat.json (``chat_rows``), code.json (``code_rows`` alpaca rows) and the profile ``p.yaml``."""
    (tmp_path / "chat.json").write_text(json.dumps(chat_rows))
    (tmp_path / "code.json").write_text(json.dumps([{"instruction": f"python def f{i}", "output": "return 1"}
                                                    for i in range(code_rows)]))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "artifact_root": str(tmp_path / "art"), "data": {
        "domains": ["chat", "code"], "margin": 2, "min_score": 2,
        "lexicons": {"chat": ["letter", "friend"], "code": ["python", "function", "def", "return", "loop"]},
        "sources": {"chat": [{"kind": "local", "format": "alpaca", "mixed": True, "path": str(tmp_path / "chat.json")}],
                    "code": [{"kind": "local", "format": "alpaca", "path": str(tmp_path / "code.json")}]}}}))
    return cfg
