"""`fqopt search` as a new user runs it with the output going to a log (no terminal): stage
headers, progress with elapsed time and ETA, the end summary (recommended plan, export command,
comparison with the best baseline, the refined plan's verdict, the study and the dashboard
command); then `fqopt show`, the plan files, the Optuna artifacts, and examples/python_api.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import copy_trained_run

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80", "TERM": "dumb"}


@pytest.fixture(scope="module")
def logged(tiny_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("cli-log") / "run"
    copy_trained_run(tiny_run, dest)
    r = subprocess.run([sys.executable, "-m", "fqopt", "search", "--run", str(dest),
                        "--trials", "20", "--refine-top", "1", "--budget", "4"],
                       capture_output=True, text=True, env=_env(), timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return dest, r.stdout, r.stderr


def test_log_has_stage_headers_progress_and_no_terminal_codes(logged):
    run, out, err = logged
    headers = re.findall(r"^── stage (\d)/6: (\w+) ", err, flags=re.M)
    assert headers == [(str(i + 1), name) for i, name in
                       enumerate(("train", "profile", "search", "test", "refine", "report"))]
    for name in ("train", "profile", "search", "test", "refine", "report"):
        assert re.search(rf"^  {name} finished in \d+:\d\d  \(total \d+:\d\d\)$", err, re.M), name
    progress = [ln for ln in err.splitlines() if re.match(r"^  (search|test split): \d+/\d+", ln)]
    assert progress and all("elapsed" in ln or "done in" in ln for ln in progress)
    assert any("ETA" in ln for ln in progress)
    # the old nested labels ("refine 1/1: refine 1/3") are gone
    assert "refine 1/1: refine" not in err
    # the default refinement is fixed-bit fine-tuning (no bits to learn)
    assert re.search(r"^  refine pareto-\d\d: fine-tune: \d+/\d+", err, re.M)
    assert "\x1b[" not in err + out


def test_notes_print_as_written(logged):
    """Every note of the results is in the log verbatim (no rich markup eaten: the MCT
    install hint keeps its ``[bench]``)."""
    run, out, err = logged
    notes = json.loads((run / "reports" / "search_test.json").read_text())["notes"]
    assert notes
    for note in notes:
        assert f"note: {note}" in err, note
    from fqopt import mct

    if not mct.available():
        assert "pip install 'fqopt[bench]'" in err


def test_log_ends_with_a_decision(logged):
    run, out, err = logged
    res = json.loads((run / "reports" / "search_test.json").read_text())
    s = res["summary"]
    rec = s["recommended"]
    assert rec is not None and rec["avg_bits"] <= 4.0 + 1e-9
    name = rec["plan_file"].rsplit("/", 1)[-1]
    assert f"Recommended at ≤ 4 bits: {name}" in err
    assert "export it: fqopt export --run" in err and name in s["export_command"]
    base = s["best_baseline"]
    assert re.search(rf"best baseline at ≤ 4 bits \(.*\): {re.escape(base['label'])} ", err)
    assert re.search(r"recommended − baseline \(paired\): worst_acc [+-]\d\.\d{3} "
                     r"\[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], (better|worse|a tie)", err)
    assert "paired" in s["comparison"]["method"]
    (refined,) = s["refined"]
    assert refined["comparison"]["worst_acc"]["verdict"] in ("better", "worse", "tie")
    assert re.search(r"^Refined \(fine-tuned pareto-\d\d", err, re.M)
    assert f"optuna-dashboard sqlite:///{run}/study.db --artifact-dir {run}/artifacts" in err
    # the export command runs as printed (the user's next step)
    cmd = s["export_command"].split()
    r = subprocess.run([sys.executable, "-m", "fqopt", *cmd[1:]], capture_output=True,
                       text=True, env=_env(), timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert Path(cmd[cmd.index("--out") + 1]).is_file()


def test_plan_files_are_named_and_show_marks_the_recommended(logged):
    run, out, err = logged
    res = json.loads((run / "reports" / "search_test.json").read_text())
    files = sorted(p.name for p in (run / "plans").glob("pareto-*.json"))
    assert files == sorted(p["plan_file"].rsplit("/", 1)[-1] for p in res["pareto"])
    for f in files:
        assert re.fullmatch(r"pareto-\d\d-\d\.\d\db-[a-z0-9.-]+-(maxabs|mse)\.json", f), f
    r = subprocess.run([sys.executable, "-m", "fqopt", "show", "--run", str(run)],
                       capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rec = res["summary"]["recommended"]
    assert re.search(rf"★{rec['index']:02d}", r.stdout)
    assert rec["plan_file"] in r.stderr and "recommended at ≤ 4 bits" in r.stderr
    js = subprocess.run([sys.executable, "-m", "fqopt", "show", "--run", str(run), "--format",
                         "json", "--budget", "8"], capture_output=True, text=True, env=_env(),
                        timeout=300, cwd=ROOT)
    rows = json.loads(js.stdout)["pareto"]
    assert sum(r["recommended"] for r in rows) == 1


def test_plans_and_reports_are_optuna_artifacts(logged):
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, \
        get_all_artifact_meta

    run, out, err = logged
    study = optuna.load_study(study_name="fqopt-test_resnet-channel",
                              storage=f"sqlite:///{run}/study.db")
    store = FileSystemArtifactStore(str(run / "artifacts"))
    trial = study.trials[0]
    metas = {m.filename: m for m in get_all_artifact_meta(trial, storage=study._storage)}
    plan_name = f"plan-trial{trial.number:04d}.json"
    assert {plan_name, f"report-trial{trial.number:04d}.json"} <= set(metas)
    dest = run / "downloaded.json"
    download_artifact(artifact_store=store, artifact_id=metas[plan_name].artifact_id,
                      file_path=str(dest))
    assert json.loads(dest.read_text()) == trial.user_attrs["plan"]  # whole, not cut
    names = {m.filename for m in get_all_artifact_meta(study)}
    assert {"search_test.json", "report.html"} <= names


def test_python_api_example_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"),
                        str(tmp_path / "run"), "--quick"], capture_output=True, text=True,
                       env=_env(), timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fqopt worst @4" in r.stdout and "FP weights restored" in r.stdout
    assert re.search(r"exported .*example\.safetensors .* reloaded", r.stdout)
    assert (tmp_path / "run" / "example.safetensors").is_file()
