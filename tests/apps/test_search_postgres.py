"""``mobile-lenet search --storage postgresql://...``: two workers share one study through a real PostgreSQL
server that the test starts in a temporary folder (initdb, pg_ctl; as the postgres user where the tests run as
root, since both refuse root) and stops at the end, whatever happens. The study is read back with Optuna itself,
not through front.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_search import ROOT, QUICK, cli, pareto

INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture
def postgres():
    """A URL of a fresh PostgreSQL server listening only on a unix socket in its own temporary folder."""
    if not INITDB:
        pytest.skip("Debian's postgresql package is not installed (.ci/run installs it)")
    pytest.importorskip("psycopg")
    bin_dir = INITDB[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="ml-pg-"))  # short: a socket path has at most 107 bytes
    as_postgres = []
    if os.geteuid() == 0:  # initdb and pg_ctl refuse root
        shutil.chown(folder, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-o", f"-c listen_addresses='' -k {folder}", "-l", str(folder / "log"), "-w",
                        "start"], check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@/postgres?host={folder}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study(postgres, tmp_path):
    import optuna

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    trials = 6
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # each worker's own run folder, as on two machines
    command = [sys.executable, "-m", "mobile_lenet.apps.cli", "search", *QUICK, "--trials", str(trials),
               "--storage", postgres, "--study", "shared"]
    workers = [subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for out in outs]
    try:
        results = [w.communicate(timeout=900) for w in workers]
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert [w.returncode for w in workers] == [0, 0], [r[1] for r in results]

    study = optuna.load_study(study_name="shared", storage=postgres)
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials <= len(done) <= trials + 1  # a worker may start one trial while the other finishes the last
    # trials from both, none run twice: each trial number was trained in exactly one worker's folder
    ran = {out: {int(p.name) for p in (out / "trials").iterdir()} if (out / "trials").is_dir() else set()
           for out in outs}
    assert all(ran.values()), ran
    assert not ran[outs[0]] & ran[outs[1]]
    assert ran[outs[0]] | ran[outs[1]] == {t.number for t in done}
    assert all(Path(t.user_attrs["run"]).parent.parent in outs for t in done)

    # the front of all: a third call finds the study finished and writes it from every trial
    result = cli("search", *QUICK, "--trials", str(trials), "--storage", postgres, "--study", "shared",
                 "--out", str(outs[0]))
    assert result.returncode == 0, result.stderr
    front = json.loads((outs[0] / "front.json").read_text())
    assert {p["trial"] for p in front["complete"]} == {t.number for t in done}
    points = [{"trial": t.number, "val_accuracy": t.values[0], "latency_ms": t.values[1]} for t in done]
    assert {p["trial"] for p in front["front"]} == pareto(points)
    # the storage URL is kept in search.json without secrets (none here) and the settings are the study's
    assert json.loads((outs[1] / "search.json").read_text())["study"] == "shared"
