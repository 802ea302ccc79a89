"""Trials per hour of one `slimformer auto` study run by 1 worker and by 2 workers sharing a PostgreSQL study.

Starts a throwaway PostgreSQL cluster (`Cluster` below: initdb and pg_ctl from Debian's `postgresql` package,
run as an unprivileged user when this runs as root), then runs the same small study twice, each from
scratch (its own study name and work folder, so both do the same work): once with `--workers 1`, once with
`--workers 2`. Prints and writes JSON with wall seconds, trained trials and trials per hour, and the CPU.

    python benchmarks/auto_workers.py --model TEACHER [--trials 6] [--json out.json] [-- auto options]

The default study: 1,500 training and 400 evaluation rows, 1 epoch a trial, a budget every shape meets.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class Cluster:
    """A started PostgreSQL cluster in `root` (its own data directory, socket and free loopback port, no fsync);
    `url` is a SQLAlchemy URL of its `postgres` database (psycopg 3, the extra 'distributed'); `stop()` ends it."""

    def __init__(self, root: Path) -> None:
        found = shutil.which("initdb")
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        if not found and not versions:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        self.binaries = Path(found).parent if found else Path(versions[-1]).parent
        # the server refuses to run as root: then it runs as `postgres` (Debian's) or `nobody`
        self.user = None if os.geteuid() else next((u for u in ("postgres",) if _user_exists(u)), "nobody")
        self.data, sockets = root / "data", root / "socket"
        sockets.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (root, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            for parent in root.parents:  # the server user must reach its folder
                if parent in (Path("/tmp"), Path("/")):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        role = self.user or pwd.getpwuid(os.geteuid()).pw_name
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", role, "--no-sync")
        options = f"-k {sockets} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
        self.url = f"postgresql://{role}@127.0.0.1:{port}/postgres"

    def _run(self, program: str, *arguments: str, check: bool = True) -> None:
        command = [str(self.binaries / program), *arguments]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise SystemExit(f"{program}: {(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def run_study(model: str, url: str, workers: int, trials: int, root: Path, extra: list[str]) -> dict:
    import optuna

    name = f"bench-workers-{workers}-{int(time.time())}"
    command = [sys.executable, "-m", "slimformer.cli", "auto", "--model", model, "--storage", url]
    command += ["--study-name", name, "--workers", str(workers), "--trials", str(trials)]
    command += ["--work-dir", str(root / f"work-{workers}"), "--output", str(root / f"out-{workers}"), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    trained = sum(
        t.state.name == "COMPLETE" or (t.state.name == "PRUNED" and "screened_out" not in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )
    return {
        "workers": workers,
        "exit_code": done.returncode,
        "wall_seconds": round(seconds, 1),
        "trained_trials": trained,
        "all_trials": len(states),
        "screened_out": sum("screened_out" in t.user_attrs for t in study.get_trials(deepcopy=False)),
        "trained_per_hour": round(3600 * trained / seconds, 1),
        "last_error": done.stderr.strip().splitlines()[-1] if done.returncode else None,
    }


def main() -> None:
    from slimformer.cpu import cpu_model, default_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more `slimformer auto` options (after --)")
    args = parser.parse_args()
    extra = args.extra or [  # a small study: a slice of the data, 1 epoch a trial, a budget every shape meets
        *("--max-train-samples", "1500", "--max-eval-samples", "400", "--epochs-range", "1", "1"),
        *("--min-speedup", "4", "--max-accuracy-drop", "100", "--final-candidates", "1"),
    ]
    root = Path(tempfile.mkdtemp(prefix="auto-workers-"))
    cluster = Cluster(root / "pg")
    try:
        results = [run_study(args.model, cluster.url, w, args.trials, root, extra) for w in (1, 2)]
    finally:
        cluster.stop()
    report = {
        "cpu": cpu_model(),
        "cores": default_threads(),
        "trials": args.trials,
        "auto_options": extra,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
