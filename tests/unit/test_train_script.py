"""Tests for images/training/train.py, run as a subprocess with the host's Python."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy", reason="train.py needs numpy in the test environment")

TRAIN = Path(__file__).resolve().parents[2] / "images" / "training" / "train.py"
FAST = {"samples": 256, "features": 8, "hidden": 16}


def train_env(out_dir: Path, params: dict[str, Any], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        TRAINYARD_OUTPUT_DIR=str(out_dir),
        TRAINYARD_PARAMS=json.dumps(params),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run_train(
    out_dir: Path, params: dict[str, Any], *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        env=train_env(out_dir, params, **extra),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def epoch_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_trains_and_loss_decreases(tmp_path: Path) -> None:
    proc = run_train(tmp_path, {"epochs": 4, "batch_size": 16})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("training: epochs=4 batch_size=16 ")
    lines = epoch_lines(proc.stdout)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    first, last = lines[0], lines[-1]
    assert set(first) == {
        "epoch",
        "epochs",
        "loss",
        "accuracy",
        "learning_rate",
        "batch_size",
        "seconds",
        "attempt",
    }
    assert (first["epochs"], first["batch_size"], first["learning_rate"]) == (4, 16, 0.1)
    assert first["attempt"] == 1
    assert last["loss"] < first["loss"]
    assert last["accuracy"] > 0.8
    assert "training complete: epochs=4" in proc.stdout.splitlines()[-1]
    assert (tmp_path / "checkpoint.npz").is_file()
    assert json.loads((tmp_path / "result.json").read_text())["loss"] == last["loss"]


def test_resume_after_simulated_failure(tmp_path: Path) -> None:
    params = {**FAST, "epochs": 5, "fail_at_epoch": 3, "fail_attempts": 1}
    first = run_train(tmp_path, params)
    assert first.returncode == 1
    assert "simulated failure at epoch 3" in first.stderr
    assert [line["epoch"] for line in epoch_lines(first.stdout)] == [1, 2]

    second = run_train(tmp_path, params, TRAINYARD_ATTEMPT="2", TRAINYARD_RESUME="1")
    assert second.returncode == 0, second.stderr
    assert "resuming from checkpoint: epoch 2 of 5 complete" in second.stdout
    lines = epoch_lines(second.stdout)
    assert [line["epoch"] for line in lines] == [3, 4, 5]
    assert {line["attempt"] for line in lines} == {2}

    # The checkpoint carries the RNG state: the resumed run ends exactly like an unbroken one.
    fresh_dir = tmp_path / "straight"
    fresh_dir.mkdir()
    straight = run_train(fresh_dir, {**FAST, "epochs": 5})
    assert epoch_lines(straight.stdout)[-1]["loss"] == lines[-1]["loss"]

    again = run_train(tmp_path, params, TRAINYARD_ATTEMPT="3")
    assert again.returncode == 0
    assert "training already complete: epoch 5 of 5" in again.stdout
    assert epoch_lines(again.stdout) == []


def test_failure_every_attempt_and_custom_exit_code(tmp_path: Path) -> None:
    params = {**FAST, "epochs": 2, "fail_at_epoch": 1, "fail_exit_code": 7}
    proc = run_train(tmp_path, params, TRAINYARD_ATTEMPT="9")
    assert proc.returncode == 7
    assert "simulated failure at epoch 1" in proc.stderr


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": "abc"}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"seed": 1.5}, "seed"),
        ({"exit_code": 300}, "exit_code"),
    ],
)
def test_bad_parameter_exits_2(tmp_path: Path, params: dict[str, Any], name: str) -> None:
    proc = run_train(tmp_path, params)
    assert proc.returncode == 2
    assert f"train.py: invalid parameter {name}=" in proc.stderr
    assert proc.stdout == ""


def test_bad_cli_flag_value_exits_2(tmp_path: Path) -> None:
    proc = run_train(tmp_path, {}, "--epochs", "-1")
    assert proc.returncode == 2
    assert "train.py: invalid parameter epochs=-1: must be a positive integer" in proc.stderr


def test_cli_overrides_env_and_unknown_params_warn(tmp_path: Path) -> None:
    proc = run_train(tmp_path, {**FAST, "epochs": 9, "colour": "red"}, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    assert [line["epochs"] for line in epoch_lines(proc.stdout)] == [1]
    assert "unknown parameter 'colour'" in proc.stderr


def test_exit_code_switch(tmp_path: Path) -> None:
    proc = run_train(tmp_path, {"exit_code": 3})
    assert proc.returncode == 3
    assert proc.stdout.startswith("training: ")
    assert epoch_lines(proc.stdout) == []


def test_cuda_oom_switch(tmp_path: Path) -> None:
    proc = run_train(tmp_path, {**FAST, "epochs": 3, "cuda_oom_at_epoch": 2})
    assert proc.returncode == 1
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in proc.stderr
    assert len(epoch_lines(proc.stdout)) == 1


def test_output_switches(tmp_path: Path) -> None:
    params = {**FAST, "epochs": 1, "spam_lines": 1500, "stderr_lines": 3, "allocate_mb": 20}
    proc = run_train(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    spam = [line for line in proc.stdout.splitlines() if line.startswith("spam ")]
    assert len(spam) == 1500
    assert spam[0].startswith("spam 000001 ")
    assert spam[-1].startswith("spam 001500 ")
    assert all(len(line) == 99 for line in spam)
    assert [line[:13] for line in proc.stderr.splitlines() if line.startswith("stderr ")] == [
        "stderr 000001",
        "stderr 000002",
        "stderr 000003",
    ]
    assert "allocated 20 MiB of 20 MiB" in proc.stdout


def test_missing_output_dir_trains_without_checkpoints(tmp_path: Path) -> None:
    proc = run_train(tmp_path / "absent", {**FAST, "epochs": 2})
    assert proc.returncode == 0, proc.stderr
    assert "does not exist; training without checkpoints" in proc.stderr
    assert len(epoch_lines(proc.stdout)) == 2
    assert not (tmp_path / "absent").exists()


def start_train(out_dir: Path, params: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TRAIN)],
        env=train_env(out_dir, params),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_saves_checkpoint_and_exits_143(tmp_path: Path) -> None:
    proc = start_train(tmp_path, {**FAST, "epochs": 200, "epoch_seconds": 0.05})
    try:
        assert proc.stdout is not None
        seen = []
        while len(seen) < 2:
            line = proc.stdout.readline()
            assert line, "train.py ended early"
            if line.startswith("{"):
                seen.append(json.loads(line))
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143
    last = [*seen, *epoch_lines(stdout)][-1]["epoch"]
    assert f"received SIGTERM, checkpoint saved at epoch {last}" in stdout
    assert (tmp_path / "checkpoint.npz").is_file()

    resumed = run_train(tmp_path, {**FAST, "epochs": last + 1})
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoint: epoch {last} of {last + 1} complete" in resumed.stdout
    assert [line["epoch"] for line in epoch_lines(resumed.stdout)] == [last + 1]


def test_sigterm_interrupts_sleep_promptly(tmp_path: Path) -> None:
    proc = start_train(tmp_path, {**FAST, "sleep_seconds": 60})
    try:
        assert proc.stdout is not None
        while "sleeping" not in proc.stdout.readline():
            pass
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert time.monotonic() - started < 5
    assert "received SIGTERM, checkpoint saved at epoch 0" in stdout
