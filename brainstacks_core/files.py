"""Atomic file writes, checksums and canonical safetensors bytes.

Every artifact the pipeline writes goes through :func:`atomic_write` (temp file in
the same directory, fsync, ``os.replace``), so a reader never sees a half-written
file and a killed process leaves either the old file or the new one. A figure records
the hash of its inputs in a PNG text chunk (:func:`png_is_current`), so an unchanged
plot is not drawn again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the temporary file by any means (safetensors, parquet, text).
    On an exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: Final destination. Parent folders are created.

    Yields:
        The temporary path to write.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # make the rename durable where supported
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(tmp: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Swap a fully written folder ``tmp`` into place at ``dst``.

    The old folder (if any) is renamed aside first and removed after the swap, so a reader
    sees either the old or the new folder, never a half-written one. ``tmp`` must be on the
    same file system as ``dst`` (create it with ``tempfile.mkdtemp(dir=dst.parent)``).

    Returns:
        ``dst`` as a :class:`Path`.
    """
    import shutil

    tmp, dst = Path(tmp), Path(dst)
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def _canonical_header(raw: bytes) -> bytes:
    """A safetensors JSON header with sorted keys, compact, space-padded to a multiple of 8 bytes."""
    text = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a serialized safetensors file) with its header in one canonical order.

    safetensors writes ``__metadata__`` from a hash map whose order changes from process to
    process, so the same tensors and metadata give different bytes (and sha256) in two
    processes: a router trained identically on two hosts would get two versions. Sorting
    the header's keys makes the bytes a function of the content; readers do not care
    about the order.
    """
    n = int.from_bytes(data[:8], "little")
    header = _canonical_header(data[8:8 + n])
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def canonicalize_safetensors(path: str | os.PathLike[str]) -> None:
    """:func:`canonical_safetensors` in place on a file (normally a temporary one before its rename).

    The header is rewritten where it is (the same length in practice: only the key order
    changes); otherwise the tensors are copied after the new header in chunks (never the
    whole file in memory: a Gemma-3-12B stack is ~538 MB).
    """
    path = Path(path)
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = _canonical_header(fh.read(n))
        if len(header) == n:
            fh.seek(8)
            fh.write(header)
            return
    tmp = path.with_name(path.name + ".canonical")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        src.seek(8 + n)
        dst.write(len(header).to_bytes(8, "little") + header)
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
    os.replace(tmp, path)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def blake3_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex BLAKE3 of ``data``, multi-threaded (~3 GB/s per core; sha256 ~1.3 GB/s here).

    The fast integrity check of files whose BLAKE3 was recorded when they were written
    (stack files); sha256 stays the standard digest the catalog and manifests publish.
    """
    import blake3

    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> str:
    """Content sha256 of a folder's files: the sha256 of ``"<file sha256>  <relative path>"`` lines,
    sorted by path (what ``sha256sum`` prints). Dot-files and the names in ``exclude`` are skipped.

    Raises:
        FileNotFoundError: ``folder`` holds no file to hash.
    """
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in exclude
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no files to hash in {root}")
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    return sha256_bytes(lines.encode("utf-8"))


PNG_INPUTS_KEY = "brainstacks:inputs"
"""The PNG ``tEXt`` keyword under which a figure records the hash of what it was drawn from."""


def png_text(path: str | os.PathLike[str], keyword: str = PNG_INPUTS_KEY) -> str | None:
    """The value of a PNG ``tEXt`` chunk (the chunks before the image data only), or None.

    None: no file, not a PNG, or no such chunk before the first ``IDAT``.
    """
    import struct

    want = keyword.encode("latin-1")
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                size, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None
                data = f.read(size)
                f.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"tEXt":
                    name, _, value = data.partition(b"\0")
                    if name == want:
                        return value.decode("latin-1")
    except OSError:
        return None


def png_is_current(path: str | os.PathLike[str], inputs_key: str) -> bool:
    """Whether ``path`` is a PNG drawn from exactly these inputs (its :data:`PNG_INPUTS_KEY` chunk matches).

    Plots call it before drawing: a re-run with unchanged inputs (and unchanged code,
    part of the key) keeps the file, byte for byte, instead of drawing it again.
    """
    return png_text(path) == inputs_key
