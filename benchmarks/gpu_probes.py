"""Measuring helpers of ``gpu_check.py``: device memory, host syncs, clocks, per-section time budgets.

Each helper has a CUDA path (what a GPU worker runs) and a CPU path that the ``--dry-run``
exercises with the same calls:

* memory: ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` after
  ``reset_peak_memory_stats`` on CUDA; on the CPU the bytes of the tensors a model holds
  (:func:`model_bytes`) and the growth of the process's RSS high-water mark (Linux
  ``/proc/self/clear_refs``), which is not comparable with the GPU model at tiny shapes.
* host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` and the warnings it raises on CUDA;
  on the CPU the aten ops that would sync on CUDA, counted by a ``TorchDispatchMode`` (the
  set of tests/test_host_syncs.py, checked equal by tests/test_gpu_check.py). Each sync is
  attributed to the first Python frame outside torch (brainstacks, trl, transformers, ...).
* budgets: a section runs under ``SIGALRM``; past its budget it raises :class:`SectionTimeout`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GB = 1e9
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive",
               "unique_dim", "masked_scatter"}
_TORCH_DIR = str(Path(torch.__file__).parent)


class SectionTimeout(RuntimeError):
    """A section ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the block after ``seconds`` (main thread, POSIX)."""
    def on_alarm(_sig, _frame):
        raise SectionTimeout(f"ran past its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on the CPU): call before every clock read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def origin(filename: str) -> str:
    """Which code a Python frame belongs to."""
    f = filename.replace("\\", "/")
    for key, name in (("/brainstacks_core/", "brainstacks"), ("/benchmarks/", "brainstacks"), ("/trl/", "trl"),
                      ("/transformers/", "transformers"), ("/accelerate/", "accelerate"), ("/peft/", "peft"),
                      ("/lm_eval/", "lm_eval"), ("/torch/", "torch")):
        if key in f:
            return name
    return "other"


def _caller_outside_torch() -> str:
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR) or __file__ == frame.f_code.co_filename):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


class CpuSyncCounter(TorchDispatchMode):
    """Counts aten ops that force a device->host sync on CUDA (boolean-mask indexing included)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS or (name in {"index", "index_put", "index_put_"} and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool
                for a in args if isinstance(a, (list, tuple)) for t in a)):
            self.sites.append(_caller_outside_torch())
        return func(*args, **(kwargs or {}))


class SyncProbe:
    """Counts host syncs between :meth:`start` and :meth:`stop`; wrap the whole run in :meth:`capture`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sites: list[str] = []
        self._records: list | None = None
        self._start = 0
        self._cpu: CpuSyncCounter | None = None
        self.active = False

    @contextlib.contextmanager
    def capture(self) -> Iterator["SyncProbe"]:
        """Record warnings for the block (CUDA sync warnings arrive as Python warnings)."""
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            self._records = rec
            try:
                yield self
            finally:
                self.stop()
                self._records = None

    def start(self) -> None:
        if self.active:
            return
        self.active = True
        if self.device.type == "cuda":
            self._start = len(self._records)
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._cpu = CpuSyncCounter()
            self._cpu.__enter__()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            hits = [w for w in self._records[self._start:] if "synchroniz" in str(w.message).lower()]
            self.sites += [f"{w.filename}:{w.lineno}" for w in hits]
        else:
            self._cpu.__exit__(None, None, None)
            self.sites += self._cpu.sites
            self._cpu = None

    def summary(self, steps: int) -> dict:
        """Syncs per step, by origin, and the five most frequent call sites."""
        by = Counter(origin(s) for s in self.sites)
        top = Counter(s.rsplit("/", 2)[-2] + "/" + s.rsplit("/", 1)[-1] if "/" in s else s for s in self.sites)
        return {"per_step": len(self.sites) / max(1, steps), "steps": steps,
                "per_step_by_origin": {k: v / max(1, steps) for k, v in sorted(by.items())},
                "top_sites": [f"{site} x{n}" for site, n in top.most_common(5)],
                "method": "torch.cuda.set_sync_debug_mode('warn') warnings" if self.device.type == "cuda"
                else "sync-forcing aten ops on CPU (TorchDispatchMode, tests/test_host_syncs.py's set)"}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class MemProbe:
    """Allocated and peak bytes of the device (CUDA) or of the process (CPU: RSS growth)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._rss0 = 0

    @property
    def method(self) -> str:
        return ("torch.cuda.memory_allocated / max_memory_allocated" if self.device.type == "cuda"
                else "CPU: bytes of the model's tensors; peaks = those + RSS high-water growth (not comparable "
                     "with the GPU model at tiny shapes)")

    def allocated(self) -> float:
        """Bytes allocated on the device now (CUDA); 0 on the CPU (use :func:`model_bytes`)."""
        return float(torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else 0.0

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
            self._rss0 = _rss_kib("VmRSS")

    def peak(self, resident: float = 0.0) -> float:
        """Peak bytes since :meth:`reset_peak` (CPU: ``resident`` + the RSS high-water growth)."""
        if self.device.type == "cuda":
            sync(self.device)
            return float(torch.cuda.max_memory_allocated(self.device))
        return resident + max(0, _rss_kib("VmHWM") - self._rss0) * 1024.0


def free(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks, so the next measurement starts clean."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _tensor_bytes(t: torch.Tensor | None, device_type: str, seen: set) -> int:
    if t is None or not isinstance(t, torch.Tensor) or t.device.type != device_type:
        return 0
    key = (t.untyped_storage().data_ptr(), t.device)
    if key in seen:
        return 0
    seen.add(key)
    return t.untyped_storage().nbytes()


def model_bytes(module: torch.nn.Module, device_type: str, frozen: bool = True) -> int:
    """Bytes of the tensors ``module`` holds on ``device_type``: parameters, buffers, bitsandbytes
    quantisation state (absmax, code) and, with ``frozen``, the stacked layers' FrozenBank buffers."""
    seen: set = set()
    total = 0
    for p in list(module.parameters()) + list(module.buffers()):
        total += _tensor_bytes(p, device_type, seen)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            total += _tensor_bytes(getattr(qs, "absmax", None), device_type, seen)
            total += _tensor_bytes(getattr(qs, "code", None), device_type, seen)
    if frozen:
        for m in module.modules():
            bank = getattr(m, "frozen", None)
            if bank is not None and hasattr(bank, "nbytes"):
                for t in (bank.a, bank.router, bank.b):
                    total += _tensor_bytes(t, device_type, seen)
    return total


def host_side_bytes(module: torch.nn.Module) -> int:
    """Bytes of the stacks' host-side tensors (null-space basis, router noise) of every stacked layer."""
    total = 0
    for m in module.modules():
        bank = getattr(m, "frozen", None)
        for basis, noise in getattr(bank, "_host", {}).values():
            total += sum(t.numel() * t.element_size() for t in (basis, noise) if t is not None)
    return total


def ratio(measured: float, model: float, expect: str | None = "0.8-1.25") -> dict:
    """A measured / memory-model figure."""
    return {"measured_gb": measured / GB, "model_gb": model / GB,
            "ratio": measured / model if model else float("nan"), "expect": expect}


def figure(value: float, unit: str, target: str | None = None, ok: bool | None = None, **extra) -> dict:
    """One figure with its target (where the issue gives one) beside it."""
    return {"value": value, "unit": unit, "target": target, "ok": ok, **extra}


class Clock:
    """Seconds of a block, synchronised with the device on both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Clock":
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0
