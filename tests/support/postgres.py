"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` on
127.0.0.1, a free port, a temporary data directory.

PostgreSQL refuses to run as root; when the tests run as root (CI does), the
server's commands run as the ``postgres`` user (``runuser``) in a directory
that user owns. Binaries are taken from ``PATH`` or the newest
``/usr/lib/postgresql/*/bin``; without them the tests that need a server skip.

:func:`server` starts one server per test session (the ``pg_server``
fixture); :meth:`PgServer.fresh_database` makes an empty database per test,
so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

#: the user and password the tests connect with (a password, so the URL
#: form with credentials is exercised, and redaction has something to find)
USER = "forescale"
PASSWORD = "pg-test-secret-7f3a"


def bin_dir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` are (``None``: not installed)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server; :meth:`stop` ends it and removes its files."""

    root: Path
    port: int
    bindir: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        auth = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], check=check, capture_output=True, text=True, timeout=60)

    def fresh_database(self) -> str:
        """A new empty database; returns its URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start(*, durable: bool = False) -> PgServer:
    """initdb, then start on a free port; raises RuntimeError (with the
    server's log) if it does not come up. ``durable``: fsync on, as in
    production (the tests run without it; the benchmark with it)."""
    bindir = bin_dir()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="forescale-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    srv = PgServer(root, _free_port(), bindir, as_user)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    srv._run(str(bindir / "initdb"), "-D", str(srv.data), "-U", USER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
    opts = (f"-c listen_addresses=127.0.0.1 -c port={srv.port} -c unix_socket_directories={root} "
            f"-c fsync={'on' if durable else 'off'} -c max_connections=200 -c shared_buffers=32MB")
    res = srv._run(str(bindir / "pg_ctl"), "-D", str(srv.data), "-l", str(root / "log"), "-o", opts,
                   "-w", "-t", "60", "start", check=False)
    if res.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        srv.stop()
        raise RuntimeError(f"PostgreSQL did not start: {res.stderr}\n{log}")
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                srv.stop()
                raise RuntimeError("PostgreSQL did not accept connections within 30 s") from None
            time.sleep(0.1)
    return srv


# ------------------------------------------------------------------ fixtures
import pytest  # noqa: E402 - the fixtures below are for test modules that import them


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (skips without the binaries)."""
    if bin_dir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg")
    srv = start()
    yield srv
    srv.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL (with its password) of a fresh, empty database."""
    return pg_server.fresh_database()
