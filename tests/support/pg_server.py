"""A throwaway PostgreSQL server for the tests: a fresh cluster in a temporary folder, on loopback only.

The PostgreSQL binaries (``initdb``, ``postgres``) are found on PATH or under ``/usr/lib/postgresql/*/bin``
(Debian's layout). PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` OS user and the server runs as that user. The server listens on 127.0.0.1 at a free port, keeps its
Unix socket inside the temporary folder (no clash with a system server), trusts local connections (nothing but
this process can reach a loopback port in a throwaway cluster that lives for one test session), and is stopped
and deleted when the session ends. Durability settings are off: a crash loses only test data.

    python tests/support/pg_server.py      # start one, print its URL, stop it on Enter (handy for benchmarks)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
#: Settings for a disposable test server: no fsync, small footprint.
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}
#: Set either variable to make a missing server an error instead of a skip (``.ci/run`` sets the first).
REQUIRE_ENV = ("RECAE_REQUIRE_POSTGRES", "CI")


class ServerUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def postgres_required() -> bool:
    """True when tests must fail rather than skip without a server (CI)."""
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no") for name in REQUIRE_ENV)


def find_bindir() -> Path:
    """Folder holding ``initdb`` and ``postgres``: PATH first, then the newest ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("initdb")
    if on_path and Path(on_path).with_name("postgres").exists():
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise ServerUnavailable("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
                            "install the distribution's `postgresql` package")


def free_port() -> int:
    """A TCP port on the loopback nobody listens on now (the PostgreSQL server's, and the HTTP tests' too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """One running cluster. ``url(dbname)`` gives a SQLAlchemy URL; ``create_database`` a fresh database."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    run_as: str | None
    _count: int = field(default=0)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                               autocommit=True, connect_timeout=10)

    def create_database(self, prefix: str = "recae_test") -> str:
        """A new empty database; returns its URL."""
        self._count += 1
        name = f"{prefix}_{os.getpid()}_{self._count}"
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')  # name made here, never from input
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database``, ending any connection still open to it."""
        name = url.rsplit("/", 1)[1]
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown, then delete the cluster."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: roll back sessions, then exit
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _reachable_temp_dir() -> str:
    """The temp folder when every folder above it is searchable by other users (the server's user), else /tmp."""
    folder = Path(tempfile.gettempdir()).resolve()
    if all(os.stat(p).st_mode & 0o001 for p in (folder, *folder.parents)):
        return str(folder)
    return "/tmp"


def _as_user(run_as: str | None) -> dict[str, object]:
    """subprocess arguments that run a child as ``run_as`` (root only)."""
    if run_as is None:
        return {}
    entry = pwd.getpwnam(run_as)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": run_as, "LOGNAME": run_as}}


def start_server(settings: dict[str, str] | None = None) -> PostgresServer:
    """initdb + postgres in a new temporary folder; raises ServerUnavailable saying why when that fails."""
    bindir = find_bindir()
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise ServerUnavailable("running as root and there is no `postgres` OS user to run the server "
                                    "(PostgreSQL refuses to run as root)") from None
        run_as = SUPERUSER
    root = Path(tempfile.mkdtemp(prefix="recae-pg-", dir=_reachable_temp_dir() if run_as else None))
    try:
        os.chmod(root, 0o700)
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        data = root / "data"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=root, **_as_user(run_as),  # type: ignore[call-overload]
        )
        if init.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        options = {**TEST_SETTINGS, **(settings or {})}
        for attempt in range(3):
            port = free_port()
            command = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root)]
            for name, value in options.items():
                command += ["-c", f"{name}={value}"]
            log = open(root / "server.log", "ab")  # noqa: SIM115 - handed to the child
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                       start_new_session=True, **_as_user(run_as))  # type: ignore[call-overload]
            log.close()
            server = PostgresServer(root=root, port=port, process=process, run_as=run_as)
            if _wait_ready(server):
                return server
            if process.poll() is None:
                process.kill()
                process.wait()
        tail = (root / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise ServerUnavailable(f"the PostgreSQL server did not start: {' | '.join(tail)}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _wait_ready(server: PostgresServer) -> bool:
    """Poll until the server accepts connections (True) or its process ends / the timeout passes (False)."""
    try:
        import psycopg
    except ImportError:
        server.process.kill()
        server.process.wait()
        raise ServerUnavailable("psycopg is not installed (pip install -e '.[postgres]')") from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with psycopg.connect(host="127.0.0.1", port=server.port, user=SUPERUSER, dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    server = start_server()
    try:
        print(server.url(), flush=True)
        input("PostgreSQL is running; press Enter to stop it and delete its data\n")
    finally:
        server.stop()
