"""The monitored setup in one command: a persistent Prefect server (SQLite or PostgreSQL), a process work pool,
N workers and the deployments of ``prefect.yaml`` — started idempotently, and stopped by the PIDs it recorded.

Everything it starts is recorded in ``$PREFECT_HOME/uniadc-server/state.json`` (PID and kernel start time of
each process, so a recycled PID is never signalled); ``stop`` ends exactly those process groups.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.files import write_text_atomic

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_uniadc"
DATABASE_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
DEFAULT_POOL = "local-proc"
REPO_ROOT = Path(__file__).resolve().parents[1]
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ServerError(RuntimeError):
    """The server, its database or a worker could not be started; the message is one line for the user."""


@dataclass
class Proc:
    pid: int
    started: int  # the kernel's start time of the process (clock ticks since boot)
    log: str

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.started


@dataclass
class ServerState:
    host: str
    port: int
    database: str
    database_url: str  # password masked
    pool: str
    home: str
    server: Proc
    workers: list[Proc] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerState:
        data = dict(data)
        data["server"] = Proc(**data["server"])
        data["workers"] = [Proc(**w) for w in data.get("workers", [])]
        return cls(**data)


def prefect_home() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser().resolve()


def state_dir(home: Path | None = None) -> Path:
    return (home or prefect_home()) / "uniadc-server"


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when no such process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def read_state(home: Path | None = None) -> ServerState | None:
    path = state_dir(home) / "state.json"
    try:
        return ServerState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(state: ServerState) -> None:
    write_text_atomic(state_dir(Path(state.home)) / "state.json", json.dumps(asdict(state), indent=2) + "\n")


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def running_server(home: Path | None = None) -> ServerState | None:
    """The server ``start`` left running under this PREFECT_HOME, when it is alive and answers."""
    state = read_state(home)
    if state is None or not state.server.alive() or not api_healthy(state.api_url):
        return None
    return state


def mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def resolve_database(database: str, url: str | None, home: Path) -> str:
    """The SQLAlchemy URL for ``database`` (sqlite|postgres); a given URL must be of that kind."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if database not in ("sqlite", "postgres"):
        raise ServerError(f"--database: {database!r} is not one of sqlite, postgres")
    url = url or next((os.environ[k] for k in DATABASE_ENV if os.environ.get(k)), None)
    if url is None:
        url = DEFAULT_POSTGRES_URL if database == "postgres" else f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ServerError(f"--database-url: {url!r} is not a database URL") from exc
    want = "postgresql+asyncpg" if database == "postgres" else "sqlite+aiosqlite"
    if parsed.drivername != want:
        raise ServerError(
            f"--database-url: {mask_url(url)} is not a {database} URL (expected the {want}:// driver)"
        )
    return url


def _on_maintenance_db(url: str, statement) -> Any:
    """Run ``await statement(conn, database_name)`` on the URL's server, connected to its ``postgres``
    database; an unreachable server or a bad database name is a one-line :class:`ServerError`."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = parsed.database or ""
    if not _DB_NAME.match(name):
        raise ServerError(f"--database-url: database name {name!r} must match {_DB_NAME.pattern}")

    async def run() -> Any:
        import asyncpg

        host, port = parsed.host or "127.0.0.1", parsed.port or 5432
        try:
            conn = await asyncpg.connect(
                host=host, port=port, user=parsed.username or "postgres", password=parsed.password,
                database="postgres", timeout=10,
            )  # fmt: skip
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise ServerError(f"--database-url: cannot reach PostgreSQL at {host}:{port}: {exc}") from exc
        try:
            return await statement(conn, name)
        finally:
            await conn.close()

    return asyncio.run(run())


def ensure_postgres_database(url: str) -> bool:
    """Create the URL's database when missing; True when created."""

    async def create(conn, name: str) -> bool:
        import asyncpg

        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:  # created meanwhile by another start
            return False
        return True

    return _on_maintenance_db(url, create)


def drop_postgres_database(url: str) -> None:
    """Drop the URL's database if it exists, closing its connections (benchmarks and tests start empty)."""

    async def drop(conn, name: str) -> None:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    _on_maintenance_db(url, drop)


def postgres_reachable(url: str = DEFAULT_POSTGRES_URL, timeout: float = 1.0) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prefect_exe() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_CLI_COLORS="false",
    )
    env.update(extra)
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT) -> Proc:
    """Start ``args`` in its own session (so a Ctrl-C in the caller's terminal does not reach it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(
            args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    started = None
    for _ in range(50):
        started = proc_start_time(p.pid)
        if started is not None:
            break
        time.sleep(0.02)
    if started is None:
        raise ServerError(f"{args[0]} exited at once; see {log}")
    return Proc(pid=p.pid, started=started, log=str(log))


def _tail(path: str | Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def stop_proc(proc: Proc, timeout: float = 20.0) -> bool:
    """SIGTERM the process group of ``proc`` (when it is still that process), SIGKILL after ``timeout``."""
    if not proc.alive():
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not proc.alive():
                return True
            time.sleep(0.1)
    return not proc.alive()


def migrate(home: Path, database_url: str) -> None:
    """Run Prefect's database migrations (idempotent; the server would also run them on start)."""
    env = _env(home, PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    out = subprocess.run(
        [prefect_exe(), "--no-prompt", "server", "database", "upgrade", "-y"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServerError(f"database migrations failed for {mask_url(database_url)}: {last[0]}")


def start_server(
    home: Path,
    host: str,
    port: int,
    database_url: str,
    timeout: float = 180.0,
    server_workers: int = 1,
    log_name: str = "server.log",
    log_level: str | None = None,
) -> Proc:
    if not port_free(host, port):
        raise ServerError(f"--port: {host}:{port} is already in use by another program")
    env = _env(home, PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    env.pop("PREFECT_API_URL", None)
    # the UI is told its API address by settings, not by --port: without these it calls :4200 whatever the port
    env.update(
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=f"http://{host}:{port}/api",
    )
    if log_level:  # INFO adds uvicorn's access log: one line per request with its status code
        env["PREFECT_SERVER_LOGGING_LEVEL"] = log_level
    log = state_dir(home) / log_name
    args = [prefect_exe(), "--no-prompt", "server", "start", "--host", host, "--port", str(port)]
    if server_workers > 1:
        args += ["--workers", str(server_workers)]
    proc = _spawn(args, env, log)
    api = f"http://{host}:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_healthy(api, timeout=1.0):
            return proc
        if not proc.alive():
            raise ServerError(f"the Prefect server exited during start-up: {_tail(log)} (log: {log})")
        time.sleep(0.5)
    stop_proc(proc)
    raise ServerError(f"the Prefect server did not answer at {api} within {timeout:.0f} s (log: {log})")


@contextmanager
def private_server(home: Path | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """A server on a free port over PREFECT_HOME's SQLite database for the length of one run (what a Dask run
    needs when none is up: in ephemeral mode every Dask worker would start a server of its own)."""
    home = (home or prefect_home()).resolve()
    port = free_port(host)
    proc = start_server(
        home, host, port, resolve_database("sqlite", None, home), log_name="private-server.log"
    )
    try:
        yield f"http://{host}:{port}/api"
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last log lines, before the server goes
        stop_proc(proc)


def ensure_pool(api_url: str, pool: str) -> bool:
    """Create the process work pool when missing; True when created."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async def go() -> bool:
        async with PrefectClient(api=api_url) as client:
            try:
                await client.read_work_pool(pool)
                return False
            except ObjectNotFound:
                pass
            try:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                return False
            return True

    return asyncio.run(go())


def start_workers(
    home: Path, api_url: str, pool: str, n: int, existing: list[Proc], limit: int | None = None
) -> list[Proc]:
    """Keep the live workers of ``existing``, start the missing ones (``uniadc-1`` … ``uniadc-n``)."""
    env = _env(home, PREFECT_API_URL=api_url)
    workers: list[Proc] = []
    for i in range(n):
        if i < len(existing) and existing[i].alive():
            workers.append(existing[i])
            continue
        args = [prefect_exe(), "--no-prompt", "worker", "start", "--pool", pool, "--type", "process"]
        args += ["--name", f"uniadc-{i + 1}"]
        if limit:
            args += ["--limit", str(limit)]
        workers.append(_spawn(args, env, state_dir(home) / f"worker-{i + 1}.log"))
    for extra in existing[n:]:
        stop_proc(extra)
    return workers


def deploy_all(home: Path, api_url: str, pool: str, project: Path = REPO_ROOT) -> list[str]:
    """``prefect deploy --all`` of ``prefect.yaml`` (idempotent: redeploying updates the deployments)."""
    env = _env(home, PREFECT_API_URL=api_url)
    out = subprocess.run(
        [prefect_exe(), "--no-prompt", "deploy", "--all", "--pool", pool],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        text = (out.stdout + out.stderr).strip().splitlines()
        raise ServerError(f"prefect deploy failed: {(text or ['no output'])[-1]}")
    return sorted(set(re.findall(r"Deployment '([^']+)' successfully", out.stdout)))


def start(
    database: str = "sqlite",
    database_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4200,
    workers: int = 1,
    pool: str = DEFAULT_POOL,
    deploy: bool = True,
    worker_limit: int | None = None,
    home: Path | None = None,
    say: Callable[[str], None] = print,
    log_level: str | None = None,
) -> ServerState:
    """Bring up (or keep) the server, the pool, the workers and the deployments; returns the recorded state."""
    home = (home or prefect_home()).resolve()
    url = resolve_database(database, database_url, home)
    state = read_state(home)
    if state is not None and state.server.alive() and api_healthy(state.api_url):
        if state.database != database or state.port != port or state.host != host:
            raise ServerError(
                f"a server is already running at {state.ui_url} on {state.database} "
                f"(started from {home}); run `uniadc server stop` first"
            )
        say(f"Prefect server already running at {state.ui_url} ({state.database}: {state.database_url})")
    else:
        if state is not None:  # a server that died: end whatever of it is left
            for proc in [*state.workers, state.server]:
                stop_proc(proc)
        if database == "postgres" and ensure_postgres_database(url):
            say(f"created PostgreSQL database {mask_url(url)}")
        say(f"migrating the {database} database {mask_url(url)} ...")
        migrate(home, url)
        say(f"starting the Prefect server on {host}:{port} ...")
        server = start_server(home, host, port, url, log_level=log_level)
        state = ServerState(
            host=host, port=port, database=database, database_url=mask_url(url), pool=pool, home=str(home),
            server=server,
        )  # fmt: skip
        write_state(state)
    state.pool = pool
    if ensure_pool(state.api_url, pool):
        say(f"created work pool {pool!r} (process)")
    state.workers = start_workers(home, state.api_url, pool, workers, state.workers, worker_limit)
    write_state(state)
    say(
        f"{len(state.workers)} worker(s) polling {pool!r}: pids {', '.join(str(w.pid) for w in state.workers)}"
    )
    if deploy:
        state.deployed = deploy_all(home, state.api_url, pool)
        write_state(state)
        say(f"deployed: {', '.join(state.deployed) or 'nothing'}")
    say(f"UI: {state.ui_url}   API: {state.api_url}")
    say(f"logs: {state_dir(home)}   stop with: uniadc server stop (or make ui-stop)")
    return state


def stop(home: Path | None = None, say: Callable[[str], None] = print) -> bool:
    """End the workers, then the server, that ``start`` recorded; False when nothing was recorded."""
    home = (home or prefect_home()).resolve()
    state = read_state(home)
    if state is None:
        say(f"no server recorded under {state_dir(home)}")
        return False
    for name, proc in [
        *((f"worker {i + 1}", w) for i, w in enumerate(state.workers)),
        ("server", state.server),
    ]:
        say(f"{name} (pid {proc.pid}): {'stopped' if stop_proc(proc) else 'was not running'}")
    (state_dir(home) / "state.json").unlink(missing_ok=True)
    return True
