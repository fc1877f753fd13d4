"""`taviseg tune` as worker processes with real (tiny) training.

* Two worker processes share one study in a real PostgreSQL server.
* A worker killed with SIGKILL mid-trial leaves its trial RUNNING; rerunning the command marks
  it FAIL through the storage heartbeat, re-queues its parameters (the retry resumes the killed
  trial's checkpoint) and completes the requested number of trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from tavidata.format import Dataset, DatasetWriter
from tavidata.splits import SPLITS_FILENAME, make_splits, save_splits
from tests.conftest import REPO
from tests.peers import postgres_server

WORKER_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 patients x 2 frames of 32 x 32 px with a dark disc to segment; 2 folds."""
    root = tmp_path_factory.mktemp("workers-data")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    with DatasetWriter(root, name="workers") as writer:
        for p in range(4):
            for f in range(2):
                cy, cx = rng.integers(10, 22, size=2)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
                image = np.clip(150 + rng.normal(0, 8, mask.shape) - 40 * mask, 0, 255).astype(np.uint8)
                writer.add(f"P{p:03d}", "run01", f, image, mask)
    save_splits(make_splits(Dataset.load(root), k=2, seed=0), root / SPLITS_FILENAME)
    return root


def write_config(path: Path, *, n_trials: int, epochs: int, heartbeat: int = 60, grace: int = 180) -> Path:
    config = {
        "train_overrides": {"epochs": epochs, "batch_size": 2, "amp": False, "channels_last": False,
                            "device": "cpu", "num_workers": 0},
        "study": {"name": "t", "n_trials": n_trials, "heartbeat_interval_s": heartbeat,
                  "grace_period_s": grace},
        "sampler": {"n_startup_trials": 2},
        "pruner": {"kind": "none"},
        "search_space": {"architecture": ["linknet"], "encoder": ["resnet18"], "input_size": [32],
                         "optimizer": ["adam", "rmsprop"], "lr": [1e-3, 1e-4]},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def tune_command(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "taviseg", "-q", "tune", "--config", str(config), "--data", str(data),
            "--out", str(out), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        rc = proc.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail(f"worker {proc.pid} did not finish in {WORKER_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    assert rc == 0, log.read_text()[-3000:]


def test_two_workers_share_one_postgres_study(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "tune.yaml", n_trials=4, epochs=2)
    with postgres_server(tmp_path) as url:
        procs, logs = [], []
        for i in range(2):
            logs.append(tmp_path / f"worker{i}.log")
            with logs[-1].open("w") as fh:
                procs.append(subprocess.Popen(
                    tune_command(config, data_root, tmp_path / f"out{i}", "--storage", url),
                    stdout=fh, stderr=subprocess.STDOUT, env=env(), cwd=REPO, start_new_session=True,
                ))
        for proc, log in zip(procs, logs):
            finish(proc, log)
        study = optuna.load_study(study_name="t", storage=url)
        trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # the study stops at 4 finished trials; a trial the other worker was running then is finished too
    assert 4 <= len(finished) <= 5, [t.state.name for t in trials]
    assert not [t for t in trials if t.state.name == "RUNNING"]
    pids = {t.user_attrs["pid"] for t in finished}
    assert pids == {p.pid for p in procs}, "both workers must have contributed trials"
    assert all(0.0 <= t.value <= 1.0 for t in finished if t.value is not None)
    for i in range(2):  # each worker exported the shared study
        rows = (tmp_path / f"out{i}" / "trials.csv").read_text().splitlines()
        assert len(rows) >= 5 and rows[0].startswith("number,state,value")
        assert (tmp_path / f"out{i}" / "best_config.yaml").is_file()


def test_killed_worker_trial_is_failed_and_retried_on_resume(tmp_path: Path, data_root: Path) -> None:
    config = write_config(tmp_path / "tune.yaml", n_trials=2, epochs=6, heartbeat=1, grace=2)
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(tune_command(config, data_root, out), stdout=fh, stderr=subprocess.STDOUT,
                                env=env(), cwd=REPO, start_new_session=True)
    # Kill once trial 0 has finished its first epoch (its history is on disk) and is still running.
    marker = out / "trials" / "trial_0000" / "fold_0" / "history.csv"
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "trial 0 never finished an epoch"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    storage = f"sqlite:///{out / 'study.db'}"
    killed = optuna.load_study(study_name="t", storage=storage).trials[0]
    assert killed.state.name == "RUNNING" and killed.user_attrs["pid"] == proc.pid
    epochs_before = len(killed.intermediate_values)
    assert epochs_before < 6

    second_log = tmp_path / "second.log"
    with second_log.open("w") as fh:
        resumed = subprocess.Popen(tune_command(config, data_root, out), stdout=fh, stderr=subprocess.STDOUT,
                                   env=env(), cwd=REPO, start_new_session=True)
    finish(resumed, second_log)

    trials = optuna.load_study(study_name="t", storage=storage).trials
    states = [t.state.name for t in trials]
    assert trials[0].state.name == "FAIL", states  # the stale trial, failed via the heartbeat
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states, states
    retry = [t for t in trials if t.number > 0 and t.user_attrs.get("source_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == trials[0].params and retry[0].user_attrs["pid"] == resumed.pid
    # the retry continued the killed trial's training: same folder, all 6 epochs reported
    assert sorted(retry[0].intermediate_values) == list(range(1, 7))
    history = (out / "trials" / "trial_0000" / "fold_0" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6
    rows = (out / "trials.csv").read_text().splitlines()
    assert any(r.split(",")[12] == "0" for r in rows[1:])  # retried_from column
