"""Several workers on one PostgreSQL study (docs/design.md §4.6): run the same command on each, and
together they complete exactly the requested trials, each seed once, nothing lost.

Needs a server: ``FQOPT_TEST_POSTGRES_URL`` (``scripts/test.sh`` starts one with
``scripts/postgres.sh`` and sets it).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import uuid
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from tests.fixtures import copy_trained_run

URL = os.environ.get("FQOPT_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="FQOPT_TEST_POSTGRES_URL is not set: start a server with "
                                       "`bash scripts/postgres.sh` (scripts/test.sh does)"),
]


@pytest.fixture
def fresh_database():
    """A new, empty database on the test server (workers then race to create Optuna's tables,
    as on a first run), dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(URL)
    name = f"fqopt_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_share_one_study(tiny_run, tmp_path, fresh_database):
    from fqopt.search._pipeline import ensure_tables
    from fqopt.search._seeds import ATTR_SEED

    run = copy_trained_run(tiny_run, tmp_path / "run")
    # profile once up front, as one would before starting workers on several machines
    ensure_tables(run, ["fisher", "gradient", "grape"], "channel", calib=128)

    study_name = f"pg-{uuid.uuid4().hex[:10]}"
    n = 40
    cmd = [sys.executable, "-m", "fqopt", "search", "--run", str(run.path), "--storage",
           fresh_database,
           "--study", study_name, "--trials", str(n), "--no-report", "--refine-top", "0",
           "--format", "json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
    outs = [w.communicate(timeout=540) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err
        assert json.loads(out)["study"]["states"]["complete"] == n

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.load_study(study_name=study_name, storage=fresh_database)
    trials = study.trials
    states = collections.Counter(t.state for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, states
    assert states[TrialState.FAIL] == 0 and states[TrialState.RUNNING] == 0
    assert states[TrialState.WAITING] == 0
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == len(trials)
    # every pruned trial is a slot race lost at the end, marked as such
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs.get("fqopt:skipped") in ("surplus", "duplicate seed")
    # the seeds were enqueued once (by the worker that created the study) and ran once
    seeded = [t.user_attrs[ATTR_SEED] for t in trials if t.user_attrs.get(ATTR_SEED)]
    assert len(seeded) == len(set(seeded)) == 16
    assert len([t for t in complete if t.user_attrs.get(ATTR_SEED)]) == 16
    from optuna.artifacts import get_all_artifact_meta

    for t in complete:
        assert {"plan", "report", "seconds", "fqopt:worker"} <= set(t.user_attrs)
        assert t.values[1] == t.user_attrs["report"]["worst_acc"]
        # plans and reports are artifacts too: records in PostgreSQL, files in RUN/artifacts
        metas = get_all_artifact_meta(t, storage=study._storage)
        assert {m.filename for m in metas} == {f"plan-trial{t.number:04d}.json",
                                                f"report-trial{t.number:04d}.json"}
        assert all((run.path / "artifacts" / m.artifact_id).is_file() for m in metas)
    # both workers did part of the work
    per_worker = collections.Counter(t.user_attrs["fqopt:worker"] for t in complete)
    assert len(per_worker) == 2, per_worker
