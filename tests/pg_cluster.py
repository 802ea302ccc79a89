"""A throwaway PostgreSQL cluster for the distributed-study tests: its own data directory and socket under a
temp folder, a free loopback port, run as an unprivileged user (the server refuses root).

Debian's `postgresql` package puts initdb / pg_ctl under /usr/lib/postgresql/<version>/bin; `.ci/run` installs it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> str | None:
    """Who runs the server: this user when not root, else `postgres` (Debian's) or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _run(command: list[str], user: str | None) -> None:
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(
            f"{Path(command[-1] if user else command[0]).name}: {reason[-1] if reason else done.returncode}"
        )


class Cluster:
    """A started cluster; `url` is a SQLAlchemy URL of its `postgres` database; `stop()` ends it."""

    def __init__(self, root: Path) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.root, self.binaries, self.user = root, binaries, _server_user()
        self.data, self.socket_dir, self.port = root / "data", root / "socket", free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            root.chmod(0o755)
            for parent in root.parents:  # the server user must reach its folder
                if parent == Path("/tmp") or parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        role = self.user or pwd.getpwuid(os.geteuid()).pw_name
        _run([str(binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", role, "--no-sync"], self.user)
        options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = root / "server.log"
        _run([str(binaries / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"], self.user)
        self.url = f"postgresql://{role}@127.0.0.1:{self.port}/postgres"  # psycopg 3, the extra 'distributed'

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            _run([str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], self.user)
