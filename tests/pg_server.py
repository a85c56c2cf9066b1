"""A real, throwaway PostgreSQL server for the tests and the catalog benchmark.

Binaries: the ``pgserver`` wheel's bundled PostgreSQL 16 (installed by ``make test``
through the ``postgres`` extra, so a clean clone has it), else ``initdb``/``pg_ctl`` on
PATH. The cluster lives in a fresh temp folder, listens on 127.0.0.1 on a free port
(and on a socket folder it owns), and authenticates with a password
(``scram-sha-256``, never ``trust``). Run as root, the server runs as the
``postgres`` user (``initdb`` refuses root) through ``runuser``.

    with PgServer() as pg:
        pg.url  # postgresql://brainstacks:<password>@127.0.0.1:<port>/brainstacks
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")  # only its bundled binaries (importing it warns)
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            return bundled
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("no PostgreSQL binaries: pip install -e '.[postgres]' (pgserver) or install initdb/pg_ctl")


def _others_can_reach(path: Path) -> bool:
    """Whether every folder above ``path`` lets other users through (``o+x``)."""
    return all(os.stat(p).st_mode & 0o001 for p in path.resolve().parents)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """Start ``initdb`` + ``pg_ctl start`` in a temp folder; ``stop()`` removes it.

    Attributes:
        url: ``postgresql://brainstacks:<password>@127.0.0.1:<port>/brainstacks``.
        password: the role's random password (tests grep for it).
    """

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="bs-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.port = _free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self.user = None if os.geteuid() != 0 else "postgres"
        self.url = f"postgresql://brainstacks:{self.password}@127.0.0.1:{self.port}/brainstacks"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> "PgServer":
        self.sock.mkdir(parents=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            ent = pwd.getpwnam(self.user)
            for p in (self.root, self.sock, pwfile):
                os.chown(p, ent.pw_uid, ent.pw_gid)
            if not _others_can_reach(self.bin):  # e.g. a venv under a 0700 mktemp folder
                # copy the install with its sibling libraries (the binaries' RPATH is
                # $ORIGIN/../../../pgserver.libs) into the cluster folder postgres owns
                pkg = self.bin.parents[1]
                for part in (pkg / "pginstall", pkg.parent / "pgserver.libs"):
                    if part.exists():
                        rel = part.relative_to(pkg.parent)
                        shutil.copytree(part, self.root / "bin-copy" / "x" / rel, symlinks=True)
                self.bin = self.root / "bin-copy" / "x" / "pgserver" / "pginstall" / "bin"
        self._run("initdb", "-D", str(self.data), "-U", "brainstacks", "-A", "scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.sock} "
                "-c max_connections=200 -c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as con:
                    con.execute("CREATE DATABASE brainstacks")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
