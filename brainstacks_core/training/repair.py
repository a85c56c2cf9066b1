"""Repairing a run folder whose files disagree with its manifest (``brainstacks repair``).

A frozen stack file that changed or vanished (a concurrent writer before locks
existed, a disk error, a hand edit) would block every later run of that folder.
:func:`repair_run` re-verifies every frozen round's sha256 and drops the first
broken round, the rounds after it and every later domain (they depend on it
through parents and null-space bases), so the next run resumes there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from brainstacks_core.files import atomic_write_json

log = logging.getLogger(__name__)
# file -> ((size, mtime_ns, ctime_ns, inode), sha256) of the file versions hashed and matched in this process, as
# the stack store keeps them: checking the same unchanged file again costs one ``stat``. Any write changes the
# key (ctime cannot be set back by ``utime``), so a changed file is hashed again.
_VERIFIED: dict[str, tuple[tuple[int, int, int, int], str]] = {}


class RunInconsistentError(ValueError):
    """A run folder's files disagree with its manifest; ``brainstacks repair`` fixes it.

    Attributes:
        run_dir: the run folder.
        domain: the domain of the first broken round.
        round: that round's number.
    """

    def __init__(self, run_dir: Path, domain: str, round_index: int, problem: str, repair_hint: str = ""):
        self.run_dir, self.domain, self.round, self.problem = Path(run_dir), domain, round_index, problem
        hint = repair_hint or "brainstacks repair --config PATH [--run NAME]"
        super().__init__(f"run folder {run_dir} is inconsistent at {domain} round {round_index}: {problem}. "
                         f"Repair it (re-verify, drop that round and everything trained after it, resume): {hint}")


def _stat_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def verify_round(r: dict, cached: bool = True) -> str | None:
    """Why a frozen round's file does not match the manifest, or None when it does.

    Args:
        r: the round's manifest record (``status``, ``file``, ``file_sha256``).
        cached: accept a file version (size, mtime, ctime, inode) this process already hashed and
            matched to the same sha256 (one ``stat``); False hashes the file again.
    """
    from brainstacks_core.files import sha256_file

    if r.get("status") != "frozen":
        return None
    path = r.get("file")
    key = _stat_key(path) if path else None
    if key is None:
        return f"stack file {path} is missing"
    if cached and _VERIFIED.get(path) == (key, r["file_sha256"]):
        return None
    sha = sha256_file(path)
    if sha != r["file_sha256"]:
        _VERIFIED.pop(path, None)
        return f"{path}: sha256 {sha[:12]} differs from the manifest's {r['file_sha256'][:12]}"
    if _stat_key(path) == key:  # unchanged while it was hashed
        _VERIFIED[path] = (key, sha)
    return None


def repair_run(run_dir: Path) -> dict:
    """Re-verify every frozen round; drop the first broken one, the rounds after it and every later domain.

    Later domains depend on the broken stack (their null-space bases and parents), so
    they are reset too; their files stay on disk (new rounds get new file names).
    Idempotent: a consistent folder is left as it is.

    Returns:
        ``{"run_dir", "broken": (domain, round, problem) | None, "dropped": [stack ids]}``.
    """
    import json

    path = Path(run_dir) / "manifest.json"
    m = json.loads(path.read_text())
    order = [d for d in m["domains_order"] if d in m["domains"]]
    broken = None
    for dom in order:
        for r in m["domains"][dom]["rounds"]:
            problem = verify_round(r, cached=False)  # an explicit re-verification reads every file
            if problem:
                broken = (dom, r["round"], problem)
                break
        if broken:
            break
    if broken is None:
        return {"run_dir": str(run_dir), "broken": None, "dropped": []}
    dom, rnd, _ = broken
    later = order[order.index(dom) + 1:]
    dropped = [r["stack_id"] for r in m["domains"][dom]["rounds"] if r["round"] >= rnd]
    e = m["domains"][dom]
    e["rounds"] = [r for r in e["rounds"] if r["round"] < rnd]
    e["status"], e["stop_reason"] = "training", None
    for d in later:
        dropped += [r["stack_id"] for r in m["domains"][d]["rounds"]]
        del m["domains"][d]
    m["forgetting"] = [r for r in m["forgetting"] if r["after"] not in [dom, *later]]
    m.setdefault("repairs", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "broken": list(broken),
                                        "dropped": dropped})
    atomic_write_json(path, m)
    log.warning("repaired %s: dropped %s (%s)", run_dir, dropped, broken[2])
    return {"run_dir": str(run_dir), "broken": broken, "dropped": dropped}
