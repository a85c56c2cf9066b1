"""Run an untrusted Python program (a model's code completion plus its tests) in a sandbox.

Used by the code reward of GRPO (``rewards.code_reward``). Layers, each enough for
the common failure on its own:

* **process**: a fresh ``python -I -S`` (isolated: no site, no user paths, no
  ``PYTHON*`` variables), ``start_new_session`` so the whole process group is killed
  at the wall timeout, the environment stripped to ``PATH`` and ``LANG``, an empty
  temporary folder as the working directory (removed afterwards);
* **rlimits** (``resource.setrlimit`` in ``preexec_fn``): CPU seconds, address space,
  file size, open files, and ``RLIMIT_NPROC``; as root, the child also drops to the
  ``nobody`` user when that user can run the interpreter (root ignores ``RLIMIT_NPROC``
  and file permissions; an interpreter under ``/root`` is unreadable to ``nobody``, and
  then the audit hook below is what refuses forks and writes);
* **network**: a new, empty network namespace via ``unshare -n`` when the machine
  allows it (checked once), and in any case
* **an audit hook** (``sys.addaudithook``, installed before the program is compiled,
  and not removable from Python) that refuses sockets, ``fork``/``exec``/``spawn``/
  ``subprocess``/``os.system``, ``ctypes``, and every file write, rename, removal or
  ``mkdir`` outside the working folder.

A program passes when it exits 0 within the limits; anything else is a failure
with a reason (``timeout``, ``cpu limit``, ``memory``, ``refused: socket.connect``,
the last line of its traceback).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Runs inside the child before the program: the audit hook, then the program itself.
_GUARD = r'''
import sys, os
_ROOT = os.path.realpath(os.getcwd())
_SRC = open("program.py", encoding="utf-8").read()
_DENY = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn",
         "os.posix_spawn", "os.kill", "os.killpg", "ctypes.", "pty.", "_posixsubprocess", "os.startfile")
_WRITES = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
           "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
def _inside(p):
    try:
        p = os.fsdecode(p) if not isinstance(p, int) else None
    except Exception:
        return False
    return p is None or os.path.realpath(p).startswith(_ROOT + os.sep) or os.path.realpath(p) == _ROOT
def _hook(event, args):
    if event.startswith(_DENY):
        raise PermissionError(f"sandbox refused: {event}")
    if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        if not _inside(args[0]):
            raise PermissionError(f"sandbox refused: write outside the sandbox folder: {args[0]!r}")
    if event in _WRITES and args and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox refused: {event} outside the sandbox folder: {args[0]!r}")
sys.addaudithook(_hook)
del _hook
exec(compile(_SRC, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    Attributes:
        wall_s: wall-clock limit (the process group is killed).
        cpu_s: CPU seconds (``RLIMIT_CPU``).
        memory_mb: address space (``RLIMIT_AS``).
        nproc: processes of the sandbox user (``RLIMIT_NPROC``).
        file_mb: largest file the program may write (``RLIMIT_FSIZE``).
    """

    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512
    nproc: int = 16
    file_mb: int = 4


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run: ``passed`` is exit status 0 within the limits."""

    passed: bool
    returncode: int | None
    reason: str
    stdout: str
    stderr: str
    seconds: float
    network_namespace: bool


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -n`` works here (root or user namespaces); checked once."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_NOBODY = 65534


def _to_nobody() -> None:
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)


@functools.lru_cache(maxsize=1)
def can_drop_privileges() -> bool:
    """As root: whether the ``nobody`` user can run this interpreter (it may live under ``/root``)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], capture_output=True, timeout=10,
                              cwd="/", env={"PATH": "/usr/bin:/bin"}, preexec_fn=_to_nobody).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _preexec(limits: SandboxLimits, drop_to_nobody: bool):
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20, limits.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_to_nobody:
            _to_nobody()
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
    return apply


def _reason(proc_rc: int | None, stderr: str, timed_out: bool, limits: SandboxLimits) -> str:
    if timed_out:
        return f"timeout: over {limits.wall_s:g} s wall"
    if proc_rc == 0:
        return "passed"
    if proc_rc is not None and proc_rc < 0:
        sig = -proc_rc
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return f"cpu limit: killed by signal {signal.Signals(sig).name} ({limits.cpu_s} s CPU)"
        return f"killed by signal {signal.Signals(sig).name}"
    last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = last[-1] if last else f"exit status {proc_rc}"
    if "MemoryError" in text:
        return f"memory: over {limits.memory_mb} MB ({text})"
    return ("refused: " + text.split("sandbox refused: ", 1)[1]) if "sandbox refused: " in text else text


def run_python(program: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program`` in the sandbox and report how it ended.

    Args:
        program: Python source (e.g. a completion's function followed by ``assert`` tests).
        limits: resource limits (defaults: 5 s wall, 3 s CPU, 512 MB, 16 processes).

    Returns:
        A :class:`SandboxResult`; never raises for anything the program does.
    """
    limits = limits or SandboxLimits()
    netns = network_namespace_available()
    drop_uid = can_drop_privileges()  # root that can become nobody (else the audit hook guards files)
    work = tempfile.mkdtemp(prefix="brainstacks-sandbox-")
    start = time.perf_counter()
    try:
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as fh:
            fh.write(program)
        if drop_uid:  # the dropped-privilege child must own its folder, and only that
            os.chown(work, _NOBODY, _NOBODY)
            os.chown(os.path.join(work, "program.py"), _NOBODY, _NOBODY)
        cmd = [sys.executable, "-I", "-S", "-B", "-c", _GUARD]
        if netns:  # unshare needs root's capability, so it drops to nobody itself, inside the namespace
            drop = ["--setuid", str(_NOBODY), "--setgid", str(_NOBODY)] if drop_uid else []
            cmd = [shutil.which("unshare"), "-n", *drop, "--", *cmd]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_preexec(limits, drop_to_nobody=drop_uid and not netns))
        timed_out = False
        try:
            out, err = proc.communicate(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
        stdout, stderr = out.decode("utf-8", "replace")[-4000:], err.decode("utf-8", "replace")[-4000:]
        rc = None if timed_out else proc.returncode
        return SandboxResult(rc == 0 and not timed_out, rc, _reason(rc, stderr, timed_out, limits), stdout, stderr,
                             time.perf_counter() - start, netns)
    finally:
        shutil.rmtree(work, ignore_errors=True)
