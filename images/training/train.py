#!/usr/bin/env python3
"""Trainyard's demo training job: a one-hidden-layer MLP trained with minibatch SGD (NumPy only).

Parameters come from the JSON object in env TRAINYARD_PARAMS and can be overridden with CLI flags
(``--epochs 3 --batch-size 16``). One JSON line per epoch goes to stdout. A checkpoint is written
atomically to TRAINYARD_OUTPUT_DIR (default /outputs) after every epoch and used to resume.

Exit codes: 0 done, 1 simulated failure / CUDA OOM, 2 invalid parameters, 143 SIGTERM, 130 SIGINT,
or whatever ``exit_code`` / ``fail_exit_code`` ask for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

PROG = "train.py"
CHECKPOINT_NAME = "checkpoint.npz"
RESULT_NAME = "result.json"
ALLOCATE_STEP_MB = 16
SPAM_WIDTH = 100
START_LINE_PARAMS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "samples",
    "features",
    "hidden",
    "seed",
)


def positive(value: float) -> bool:
    """True for values > 0."""
    return value > 0


def non_negative(value: float) -> bool:
    """True for values >= 0."""
    return value >= 0


def exit_status(value: float) -> bool:
    """True for a valid process exit status."""
    return 0 <= value <= 255


@dataclass(frozen=True)
class Spec:
    """How one parameter is parsed and checked."""

    kind: type
    default: Any
    check: Callable[[float], bool]
    requirement: str
    help: str


INT_POS = (positive, "must be a positive integer")
INT_NONNEG = (non_negative, "must be an integer >= 0")
FLOAT_POS = (positive, "must be a positive number")
FLOAT_NONNEG = (non_negative, "must be a number >= 0")
STATUS = (exit_status, "must be an integer from 0 to 255")

SPECS: dict[str, Spec] = {
    "epochs": Spec(int, 5, *INT_POS, "number of epochs"),
    "batch_size": Spec(int, 32, *INT_POS, "minibatch size"),
    "learning_rate": Spec(float, 0.1, *FLOAT_POS, "SGD learning rate"),
    "samples": Spec(int, 2048, *INT_POS, "synthetic training samples"),
    "features": Spec(int, 16, *INT_POS, "input features"),
    "hidden": Spec(int, 32, *INT_POS, "hidden units"),
    "seed": Spec(int, 0, *INT_NONNEG, "random seed (data, init, shuffling)"),
    "fail_at_epoch": Spec(int, None, *INT_POS, "test: fail at the start of this epoch"),
    "fail_attempts": Spec(int, None, *INT_POS, "test: fail only while TRAINYARD_ATTEMPT <= this"),
    "fail_exit_code": Spec(int, 1, *STATUS, "test: exit code of the simulated failure"),
    "exit_code": Spec(int, None, *STATUS, "test: exit with this code right after start"),
    "sleep_seconds": Spec(float, 0.0, *FLOAT_NONNEG, "test: sleep before training"),
    "epoch_seconds": Spec(float, 0.0, *FLOAT_NONNEG, "test: sleep in every epoch"),
    "allocate_mb": Spec(int, 0, *INT_NONNEG, "test: allocate and touch this many MiB first"),
    "spam_lines": Spec(int, 0, *INT_NONNEG, "test: print this many filler lines to stdout"),
    "stderr_lines": Spec(int, 0, *INT_NONNEG, "test: print this many lines to stderr"),
    "cuda_oom_at_epoch": Spec(int, None, *INT_POS, "test: fake a CUDA OOM at this epoch"),
}


class ParamError(Exception):
    """An invalid parameter value; the message names it."""


class Interrupted(BaseException):
    """Raised from the signal handler on SIGTERM/SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def eprint(*args: object) -> None:
    """Print to stderr, flushed."""
    print(*args, file=sys.stderr, flush=True)


def out(*args: object) -> None:
    """Print to stdout, flushed."""
    print(*args, flush=True)


def die(message: str, code: int) -> NoReturn:
    """Print ``train.py: message`` to stderr and exit."""
    eprint(f"{PROG}: {message}")
    sys.exit(code)


def coerce(name: str, raw: Any) -> Any:
    """Convert a raw JSON or CLI value to the parameter's type and check it."""
    spec = SPECS[name]
    shown = raw if isinstance(raw, str) else json.dumps(raw)
    bad = ParamError(f"invalid parameter {name}={shown}: {spec.requirement}")
    value: Any
    if isinstance(raw, bool) or raw is None:
        raise bad
    if spec.kind is int:
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str):
            try:
                value = int(raw.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
    else:
        if isinstance(raw, (int, float)):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(value):
            raise bad
    if not spec.check(value):
        raise bad
    return value


def parse_params(argv: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Merge defaults, TRAINYARD_PARAMS and CLI flags; return (params, output_dir)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Trainyard's demo training job.")
    for name, spec in SPECS.items():
        flags = {f"--{name.replace('_', '-')}", f"--{name}"}
        parser.add_argument(*sorted(flags), dest=name, metavar="N", help=spec.help)
    parser.add_argument(
        "--output-dir", help="checkpoint directory (env TRAINYARD_OUTPUT_DIR, default /outputs)"
    )
    args = parser.parse_args(argv)

    raw: dict[str, Any] = {}
    text = env.get("TRAINYARD_PARAMS", "").strip()
    if text:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamError(f"TRAINYARD_PARAMS is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ParamError("TRAINYARD_PARAMS must be a JSON object")
        for name, value in loaded.items():
            if name not in SPECS:
                eprint(f"{PROG}: warning: ignoring unknown parameter {name!r}")
            elif value is not None:
                raw[name] = value
    for name in SPECS:
        value = getattr(args, name)
        if value is not None:
            raw[name] = value

    params = {name: spec.default for name, spec in SPECS.items()}
    for name, value in raw.items():
        params[name] = coerce(name, value)
    output_dir = args.output_dir or env.get("TRAINYARD_OUTPUT_DIR") or "/outputs"
    return params, output_dir


def make_data(params: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A balanced two-class problem labelled by a random (nonlinear) teacher network."""
    n, d = params["samples"], params["features"]
    x = rng.standard_normal((n, d))
    teacher_in = rng.standard_normal((d, 8)) / np.sqrt(d)
    teacher_out = rng.standard_normal(8)
    score = np.tanh(2.0 * x @ teacher_in) @ teacher_out
    y = (score > np.median(score)).astype(np.float64)
    return x, y


@dataclass
class Model:
    """One hidden tanh layer, sigmoid output, binary cross-entropy."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def init(cls, features: int, hidden: int, rng: np.random.Generator) -> Model:
        """Small random weights, zero biases."""
        return cls(
            w1=rng.standard_normal((features, hidden)) / np.sqrt(features),
            b1=np.zeros(hidden),
            w2=rng.standard_normal(hidden) / np.sqrt(hidden),
            b2=np.zeros(1),
        )

    def logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (hidden activations, output logits)."""
        h = np.tanh(x @ self.w1 + self.b1)
        return h, h @ self.w2 + self.b2[0]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean loss and accuracy on (x, y)."""
        _, z = self.logits(x)
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        accuracy = float(np.mean((z > 0) == (y > 0.5)))
        return loss, accuracy

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> None:
        """One gradient step on a minibatch."""
        h, z = self.logits(x)
        dz = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        dh = np.outer(dz, self.w2) * (1.0 - h * h)
        self.w2 -= lr * (h.T @ dz)
        self.b2 -= lr * dz.sum()
        self.w1 -= lr * (x.T @ dh)
        self.b1 -= lr * dh.sum(axis=0)

    def copy(self) -> Model:
        """A deep copy."""
        return Model(self.w1.copy(), self.b1.copy(), self.w2.copy(), self.b2.copy())


@dataclass
class Snapshot:
    """Everything needed to continue after ``epoch`` completed epochs."""

    epoch: int
    model: Model
    rng_state: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def architecture(params: dict[str, Any]) -> dict[str, int]:
    """The parameters a checkpoint must match to be resumable."""
    return {k: params[k] for k in ("samples", "features", "hidden", "seed")}


def save_checkpoint(path: str, snap: Snapshot, params: dict[str, Any]) -> None:
    """Write the snapshot atomically (temp file in the same dir, fsync, rename)."""
    meta = {
        "epoch": snap.epoch,
        "rng_state": snap.rng_state,
        "architecture": architecture(params),
        "metrics": snap.metrics,
        "saved_at": time.time(),
    }
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                w1=snap.model.w1,
                b1=snap.model.b1,
                w2=snap.model.w2,
                b2=snap.model.b2,
                meta=np.array(json.dumps(meta)),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, params: dict[str, Any]) -> Snapshot | None:
    """Read a checkpoint; None (with a warning) when absent, unreadable or for other params."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            model = Model(data["w1"], data["b1"], data["w2"], data["b2"])
        epoch = int(meta["epoch"])
        rng_state = dict(meta["rng_state"])
        saved_arch = meta["architecture"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        eprint(f"{PROG}: warning: ignoring unreadable checkpoint {path}: {exc}")
        return None
    if saved_arch != architecture(params):
        eprint(
            f"{PROG}: warning: ignoring checkpoint {path}: it was made with {saved_arch}, "
            f"this run uses {architecture(params)}"
        )
        return None
    return Snapshot(epoch, model, rng_state, dict(meta.get("metrics", {})))


def usable_output_dir(path: str) -> bool:
    """True when checkpoints can be written to ``path`` (warns on stderr otherwise)."""
    if not os.path.isdir(path):
        eprint(f"{PROG}: warning: output dir {path} does not exist; training without checkpoints")
        return False
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        eprint(
            f"{PROG}: warning: output dir {path} is not writable ({exc.strerror}); "
            "training without checkpoints"
        )
        return False
    return True


def allocate(megabytes: int) -> list[np.ndarray]:
    """Allocate and touch memory gradually, in ALLOCATE_STEP_MB steps."""
    blocks: list[np.ndarray] = []
    done = 0
    while done < megabytes:
        step = min(ALLOCATE_STEP_MB, megabytes - done)
        blocks.append(np.ones(step << 20, dtype=np.uint8))
        done += step
        out(f"allocated {done} MiB of {megabytes} MiB")
    return blocks


def spam(stream: Any, label: str, count: int) -> None:
    """Write ``count`` numbered filler lines of about SPAM_WIDTH bytes."""
    batch: list[str] = []
    for i in range(1, count + 1):
        head = f"{label} {i:06d} "
        batch.append(head + "x" * (SPAM_WIDTH - 1 - len(head)) + "\n")
        if len(batch) == 1000 or i == count:
            stream.write("".join(batch))
            stream.flush()
            batch.clear()


def fake_cuda_oom() -> NoReturn:
    """Print PyTorch's CUDA out-of-memory error the way a crashing job would, then exit 1."""
    eprint(
        "Traceback (most recent call last):\n"
        '  File "/app/train.py", line 1, in <module>\n'
        "    loss.backward()\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB "
        "(GPU 0; 15.78 GiB total capacity; 14.50 GiB already allocated; 3.75 MiB free; "
        "14.70 GiB reserved in total by PyTorch) If reserved memory is >> allocated memory try "
        "setting max_split_size_mb to avoid fragmentation.  See documentation for Memory "
        "Management and PYTORCH_CUDA_ALLOC_CONF"
    )
    sys.exit(1)


class Trainer:
    """Runs the epochs, checkpoints, and handles SIGTERM/SIGINT."""

    def __init__(self, params: dict[str, Any], output_dir: str, attempt: int) -> None:
        self.params = params
        self.attempt = attempt
        self.checkpoint = (
            os.path.join(output_dir, CHECKPOINT_NAME) if usable_output_dir(output_dir) else None
        )
        data_rng, init_rng, self.rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(params["seed"]).spawn(3)
        )
        self.x, self.y = make_data(params, data_rng)
        self.model = Model.init(params["features"], params["hidden"], init_rng)
        self.last = Snapshot(0, self.model.copy(), self.rng.bit_generator.state)
        self.saved_epoch = -1

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT raise Interrupted, which also cuts sleeps short."""

        def handler(signum: int, _frame: object) -> None:
            raise Interrupted(signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def save(self) -> bool:
        """Checkpoint the last completed epoch (once); False when checkpoints are disabled."""
        if self.checkpoint is None:
            return False
        if self.saved_epoch != self.last.epoch:
            save_checkpoint(self.checkpoint, self.last, self.params)
            self.saved_epoch = self.last.epoch
        return True

    def commit(self, snap: Snapshot, line: dict[str, Any]) -> None:
        """Record a finished epoch: state, log line and checkpoint, with signals held off."""
        blocked = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.last = snap
            out(json.dumps(line))
            self.save()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def resume(self) -> bool:
        """Load a checkpoint if there is one; True when training is already complete."""
        if self.checkpoint is None:
            return False
        snap = load_checkpoint(self.checkpoint, self.params)
        if snap is None:
            return False
        self.model = snap.model.copy()
        self.rng.bit_generator.state = snap.rng_state
        self.last = snap
        self.saved_epoch = snap.epoch
        out(f"resuming from checkpoint: epoch {snap.epoch} of {self.params['epochs']} complete")
        return snap.epoch >= self.params["epochs"]

    def check_switches(self, epoch: int) -> None:
        """Apply the per-epoch failure switches at the start of ``epoch``."""
        p = self.params
        if p["cuda_oom_at_epoch"] == epoch:
            fake_cuda_oom()
        if p["fail_at_epoch"] == epoch and (
            p["fail_attempts"] is None or self.attempt <= p["fail_attempts"]
        ):
            eprint(f"simulated failure at epoch {epoch}")
            sys.exit(p["fail_exit_code"])

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; return its metrics line."""
        p = self.params
        started = time.monotonic()
        order = self.rng.permutation(len(self.y))
        for i in range(0, len(order), p["batch_size"]):
            idx = order[i : i + p["batch_size"]]
            self.model.sgd_step(self.x[idx], self.y[idx], p["learning_rate"])
        if p["epoch_seconds"]:
            time.sleep(p["epoch_seconds"])
        loss, accuracy = self.model.evaluate(self.x, self.y)
        return {
            "epoch": epoch,
            "epochs": p["epochs"],
            "loss": round(loss, 6),
            "accuracy": round(accuracy, 4),
            "learning_rate": p["learning_rate"],
            "batch_size": p["batch_size"],
            "seconds": round(time.monotonic() - started, 3),
            "attempt": self.attempt,
        }

    def train(self) -> None:
        """Run the remaining epochs, checkpointing after each."""
        for epoch in range(self.last.epoch + 1, self.params["epochs"] + 1):
            self.check_switches(epoch)
            line = self.run_epoch(epoch)
            metrics = {"loss": line["loss"], "accuracy": line["accuracy"]}
            snap = Snapshot(epoch, self.model.copy(), self.rng.bit_generator.state, metrics)
            self.commit(snap, line)


def write_result(output_dir: str, result: dict[str, Any]) -> None:
    """Write result.json next to the checkpoint (best effort, atomic)."""
    path = os.path.join(output_dir, RESULT_NAME)
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        eprint(f"{PROG}: warning: could not write {path}: {exc}")


def attempt_number(env: dict[str, str]) -> int:
    """TRAINYARD_ATTEMPT as a positive integer (default 1)."""
    raw = env.get("TRAINYARD_ATTEMPT", "").strip() or "1"
    try:
        attempt = int(raw)
    except ValueError:
        attempt = 0
    if attempt < 1:
        raise ParamError(f"invalid TRAINYARD_ATTEMPT={raw}: must be a positive integer")
    return attempt


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    env = dict(os.environ)
    try:
        params, output_dir = parse_params(sys.argv[1:] if argv is None else argv, env)
        attempt = attempt_number(env)
    except ParamError as exc:
        die(str(exc), 2)

    started = time.monotonic()
    shown = " ".join(f"{k}={params[k]}" for k in START_LINE_PARAMS)
    resume = env.get("TRAINYARD_RESUME") or "unset"
    out(f"training: {shown} attempt={attempt} resume={resume} output_dir={output_dir}")
    if params["exit_code"] is not None:
        eprint(f"exiting with code {params['exit_code']} as requested (exit_code)")
        return int(params["exit_code"])

    trainer = Trainer(params, output_dir, attempt)
    trainer.install_signal_handlers()
    try:
        if trainer.resume():
            out(f"training already complete: epoch {trainer.last.epoch} of {params['epochs']}")
            return 0
        spam(sys.stdout, "spam", params["spam_lines"])
        spam(sys.stderr, "stderr", params["stderr_lines"])
        ballast = allocate(params["allocate_mb"])
        if params["sleep_seconds"]:
            out(f"sleeping {params['sleep_seconds']} s before training")
            time.sleep(params["sleep_seconds"])
        trainer.train()
        del ballast
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if trainer.save():
            out(f"received {name}, checkpoint saved at epoch {trainer.last.epoch}")
        else:
            out(f"received {name}, no checkpoint saved (no writable output dir)")
        return 128 + exc.signum

    metrics = trainer.last.metrics
    result = {
        "epochs": params["epochs"],
        "loss": metrics.get("loss"),
        "accuracy": metrics.get("accuracy"),
        "seconds": round(time.monotonic() - started, 3),
        "attempt": attempt,
    }
    if trainer.checkpoint is not None:
        write_result(output_dir, result)
    out(
        f"training complete: epochs={params['epochs']} loss={result['loss']} "
        f"accuracy={result['accuracy']} seconds={result['seconds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
