"""A bad setting stops run.py with one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TRAINYARD_HOST": "0.0.0.0"}, "TRAINYARD_HOST must be a loopback address"),
        ({"TRAINYARD_PORT": "eighty"}, "TRAINYARD_PORT: Input should be a valid integer"),
        ({"TRAINYARD_AGENT_LISTEN": "0.0.0.0:8001"}, "needs TRAINYARD_AGENT_SECRET"),
        ({"TRAINYARD_AGENT_SECRET": "short"}, "at least 16 characters"),
        ({"TRAINYARD_API_WORKERS": "0"}, "TRAINYARD_API_WORKERS: Input should be greater"),
    ],
)
def test_configuration_errors_are_one_line(env: dict[str, str], words: str, tmp_path: Path) -> None:
    _assert_one_line(["api"], env, words, tmp_path)


def test_api_workers_need_the_agent_apart(tmp_path: Path) -> None:
    words = "TRAINYARD_API_WORKERS above 1 needs `python run.py api`"
    _assert_one_line([], {"TRAINYARD_API_WORKERS": "2"}, words, tmp_path)


def _assert_one_line(args: list[str], env: dict[str, str], words: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")},
            "TRAINYARD_DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trainyard: configuration error: ")
    assert words in lines[0]
    assert "Traceback" not in result.stderr
