"""Content-addressed blobs and pointers in an object store (fsspec), with a local read-through cache.

Layout under the ``artifact_root`` URL (``s3://bucket/prefix``)::

    blobs/sha256/<hh>/<sha256 hex>          immutable file contents, written once
    pointers/<profile>/<kind>/<name>.json   the current version of a name (a small JSON, replaced whole)

A blob is named by the sha256 of its bytes, so it is written once (a second ``put`` of the
same bytes only checks it is there) and verified on every read. The write order of a stage
is blob, then catalog row, then pointer (:mod:`brainstacks_core.lineage.store_sync`):
readers follow pointers, so a writer killed part-way leaves blobs nobody names and nothing
half-visible. S3 and GCS replace an object atomically on PUT; other file systems get a temp
key moved onto the final one.

Each worker keeps the blobs it read in ``<cache_dir>/blobs`` under a byte budget: the least
recently used are evicted first, and a cached blob's sha256 is checked on every hit (a
corrupted cache entry is dropped and fetched again). A blob whose bytes in the store differ
from its name is refused with the command that repairs it. Credentials are never passed
or logged here: s3fs/gcsfs read them from the environment (``AWS_*``, ``GOOGLE_*``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from brainstacks_core.files import atomic_write, sha256_file
from brainstacks_core.lineage.storage_config import RemoteStore

log = logging.getLogger(__name__)

BLOB_PREFIX = "blobs/sha256"


class StoreUnreachableError(RuntimeError):
    """The object store cannot be reached or the bucket is missing; names the URL and the setting."""


class BlobIntegrityError(RuntimeError):
    """A blob's bytes do not hash to its name (or its catalog row); names the repair command."""


def _is_hex_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class BlobStore:
    """Blobs and pointers under one ``artifact_root`` URL, read through a local LRU cache.

    Args:
        remote: The resolved store (URL, non-secret fsspec options, cache folder and byte budget).
        repair_hint: The command to print when a blob fails its check (the profile's ``brainstacks
            repair --config ...``).
    """

    def __init__(self, remote: RemoteStore, repair_hint: str = "brainstacks repair --config <profile>") -> None:
        self.remote = remote
        self.url = remote.url
        self.repair_hint = repair_hint
        self._fs = None
        self._root = ""

    # ------------------------------------------------------------ connection
    @property
    def fs(self):
        """The fsspec file system of the URL (opened on first use, without the instance cache)."""
        if self._fs is None:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.url, **self._options())
        return self._fs

    def _options(self) -> dict:
        opts: dict = {"skip_instance_cache": True, **self.remote.storage_options}
        t = self.remote.connect_timeout_s
        if self.url.startswith("s3://"):
            endpoint = opts.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3") \
                or os.environ.get("AWS_ENDPOINT_URL")
            client = {"region_name": opts.pop("region_name")} if "region_name" in opts else {}
            if endpoint:
                client["endpoint_url"] = endpoint
            opts.update(client_kwargs=client, use_listings_cache=False,
                        config_kwargs={"connect_timeout": t, "read_timeout": max(t, 30.0),
                                       "retries": {"max_attempts": 1, "mode": "standard"}})
        return opts

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to (``AWS_ENDPOINT_URL`` / ``storage_options.endpoint_url``), or the URL."""
        opts = self._options()
        return (opts.get("client_kwargs") or {}).get("endpoint_url") or self.url

    def _key(self, rel: str) -> str:
        self.fs  # noqa: B018 - opening the file system sets the root the keys are under
        return f"{self._root.rstrip('/')}/{rel}" if self._root else rel

    def check(self) -> None:
        """Raise :class:`StoreUnreachableError` unless the store answers (called before a stage writes).

        The message names the URL, the endpoint and the settings that choose them; nothing is written.
        """
        try:
            fs = self.fs
            if self.url.startswith("s3://"):
                fs.retries = 1  # s3fs's own retry loop: one try, the message comes at once
            fs.invalidate_cache()
            if self.url.startswith(("s3://", "gs://", "gcs://")):
                fs.ls(self._root.split("/", 1)[0])  # raises for a missing bucket or an endpoint that does not answer
            else:
                fs.makedirs(self._root, exist_ok=True)
        except StoreUnreachableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport failure becomes the one clear error
            raise StoreUnreachableError(
                f"artifact store {self.url} is unreachable (endpoint {self.endpoint}): {type(exc).__name__}: "
                f"{exc}. Check the profile's artifact_root, storage.storage_options.endpoint_url or "
                f"$AWS_ENDPOINT_URL, and the AWS_*/GOOGLE_* credentials in the environment") from None

    # ------------------------------------------------------------ blobs
    def blob_uri(self, sha256: str) -> str:
        """The URI of the blob with this sha256: ``<url>/blobs/sha256/<hh>/<hex>``."""
        return f"{self.url}/{BLOB_PREFIX}/{sha256[:2]}/{sha256}"

    def sha_of(self, uri_or_sha: str) -> str:
        """The sha256 a blob URI (or a bare hex digest) names."""
        sha = uri_or_sha.rsplit("/", 1)[-1]
        if not _is_hex_sha(sha):
            raise ValueError(f"not a blob URI or sha256: {uri_or_sha}")
        return sha

    def has(self, sha256: str) -> bool:
        """Whether the store holds the blob."""
        return self.fs.exists(self._key(f"{BLOB_PREFIX}/{sha256[:2]}/{sha256}"))

    def put(self, local_file: str | os.PathLike[str], sha256: str | None = None, force: bool = False) -> str:
        """Upload a file as a blob (skipped when the store has it) and return its URI.

        The file is also placed in the local cache, so the writer reads it back without a download.
        ``force`` uploads it again even when the key exists: ``brainstacks repair`` replaces a corrupt
        object with the verified bytes of the same name.
        """
        sha = sha256 or sha256_file(local_file)
        key = self._key(f"{BLOB_PREFIX}/{sha[:2]}/{sha}")
        if force or not self.fs.exists(key):
            if self.url.startswith(("s3://", "gs://", "gcs://")):
                self.fs.put_file(str(local_file), key)  # one PUT: atomic on the object store
            else:
                tmp = f"{key}.tmp-{uuid.uuid4().hex}"
                self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(local_file), tmp)
                self.fs.mv(tmp, key)
            log.info("published blob %s (%d bytes)", self.blob_uri(sha), os.path.getsize(local_file))
        self._cache_insert(Path(local_file), sha)
        return self.blob_uri(sha)

    def put_bytes(self, data: bytes, force: bool = False) -> str:
        """Upload bytes as a blob and return its URI."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.put(path, force=force)

    def get(self, uri_or_sha: str, dest: str | os.PathLike[str] | None = None) -> Path:
        """The local file of a blob, read through the cache and verified; copied to ``dest`` when given.

        Raises:
            BlobIntegrityError: The store's bytes do not hash to the blob's name.
            FileNotFoundError: No such blob in the store.
        """
        sha = self.sha_of(uri_or_sha)
        cached = self._cache_hit(sha)
        if cached is None:
            cached = self._download(sha)
        if dest is None:
            return cached
        with atomic_write(dest) as tmp:
            shutil.copyfile(cached, tmp)
        return Path(dest)

    def read_bytes(self, uri_or_sha: str) -> bytes:
        """The verified bytes of a blob."""
        return self.get(uri_or_sha).read_bytes()

    def _download(self, sha: str) -> Path:
        key = self._key(f"{BLOB_PREFIX}/{sha[:2]}/{sha}")
        if not self.fs.exists(key):
            raise FileNotFoundError(f"blob {self.blob_uri(sha)} is not in the store; re-run the stage that "
                                    f"writes it, or: {self.repair_hint}")
        cache = self.remote.blob_cache
        cache.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{sha[:12]}.", suffix=".part", dir=cache)
        os.close(fd)
        tmp = Path(name)
        try:
            self.fs.get_file(key, str(tmp))
            got = sha256_file(tmp)
            if got != sha:
                raise BlobIntegrityError(f"blob {self.blob_uri(sha)} is corrupt: its bytes hash to {got}; it was "
                                         f"refused. Repair: {self.repair_hint} (re-publishes it from the run's "
                                         "verified files), or delete the object and re-run the stage")
            os.replace(tmp, cache / sha)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=sha)
        return cache / sha

    # ------------------------------------------------------------ cache (LRU under a byte budget)
    def _cache_hit(self, sha: str) -> Path | None:
        path = self.remote.blob_cache / sha
        if not path.is_file():
            return None
        if sha256_file(path) != sha:  # checked on every hit: a damaged entry is fetched again
            log.warning("cached blob %s failed its sha256 check; fetching it again", sha)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # most recently used
        return path

    def _cache_insert(self, local_file: Path, sha: str) -> None:
        cache = self.remote.blob_cache
        if (cache / sha).is_file():
            os.utime(cache / sha)
            return
        with atomic_write(cache / sha) as tmp:
            shutil.copyfile(local_file, tmp)
        self._evict(keep=sha)

    def cached_bytes(self) -> int:
        """Bytes held in the local blob cache."""
        cache = self.remote.blob_cache
        return sum(p.stat().st_size for p in cache.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if cache.is_dir() else 0

    def _evict(self, keep: str) -> None:
        cache = self.remote.blob_cache
        entries = sorted((p for p in cache.iterdir() if p.is_file() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in entries)
        for p in entries:
            if total <= self.remote.cache_bytes:
                break
            if p.name == keep:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            log.info("evicted cached blob %s (cache over its %d-byte budget)", p.name, self.remote.cache_bytes)

    # ------------------------------------------------------------ pointers
    def pointer_uri(self, profile: str, kind: str, name: str) -> str:
        """``<url>/pointers/<profile>/<kind>/<name>.json``."""
        return f"{self.url}/pointers/{profile}/{kind}/{name}.json"

    def write_pointer(self, profile: str, kind: str, name: str, target: dict) -> str:
        """Replace a pointer with ``target`` (written last: after the blob and its catalog row)."""
        rel = f"pointers/{profile}/{kind}/{name}.json"
        data = (json.dumps(target, indent=2, sort_keys=True) + "\n").encode("utf-8")
        key = self._key(rel)
        if self.url.startswith(("s3://", "gs://", "gcs://")):
            self.fs.pipe_file(key, data)
        else:
            self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{key}.tmp-{uuid.uuid4().hex}"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, key)
        return self.pointer_uri(profile, kind, name)

    def read_pointer(self, profile: str, kind: str, name: str) -> dict | None:
        """The pointer's target, or None when it was never written."""
        key = self._key(f"pointers/{profile}/{kind}/{name}.json")
        self.fs.invalidate_cache()
        try:
            return json.loads(self.fs.cat_file(key))
        except FileNotFoundError:
            return None
