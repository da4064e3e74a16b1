"""Fitting jobs to free capacity (agent/scheduling.py) and agent capacity (agent/gpus.py)."""

from __future__ import annotations

import random
import subprocess
from typing import Any

import pytest

from agent.core.scheduling import Capacity, Demand, Free, assign_gpus, pick
from agent.worker import host as gpus
from agent.worker.host import configured_gpu_ids, detect_gpu_ids

G = 1024**3


def free(
    slots: int = 4, memory: int = 8 * G, cpus: float = 4.0, gpu_ids: tuple[str, ...] = ("0", "1")
) -> Free:
    return Free(slots=slots, memory_bytes=memory, cpus=cpus, gpu_ids=gpu_ids)


def demand(job_id: str = "j", memory: int = G, cpus: float = 1.0, gpus: int = 0) -> Demand:
    return Demand(job_id=job_id, memory_bytes=memory, cpus=cpus, gpus=gpus)


# --- Free.fits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "fits"),
    [
        (demand(memory=8 * G), True),  # exactly equal memory fits
        (demand(memory=8 * G + 1), False),
        (demand(cpus=4.0), True),  # exactly equal cpus fits
        (demand(cpus=4.0 + 1e-12), True),  # float noise tolerated
        (demand(cpus=4.001), False),
        (demand(gpus=2), True),  # exactly the free GPU count
        (demand(gpus=3), False),
        (demand(memory=8 * G, cpus=4.0, gpus=2), True),
        (demand(memory=0, cpus=0.0, gpus=0), True),
    ],
)
def test_fits_boundaries(d: Demand, fits: bool) -> None:
    assert free().fits(d) is fits


@pytest.mark.parametrize("slots", [0, -1])
def test_no_slots_fits_nothing(slots: int) -> None:
    f = free(slots=slots)
    assert not f.fits(demand(memory=0, cpus=0.0, gpus=0))
    assert pick([demand("a", memory=1, cpus=0.1)], f) is None


def test_one_slot_is_enough() -> None:
    assert free(slots=1).fits(demand())


def test_no_gpus_free_fits_only_cpu_jobs() -> None:
    f = free(gpu_ids=())
    assert f.fits(demand(gpus=0))
    assert not f.fits(demand(gpus=1))


# --- pick -------------------------------------------------------------------------------------


def test_pick_takes_the_first_that_fits_in_order() -> None:
    a, b, c = demand("a"), demand("b"), demand("c")
    assert pick([a, b, c], free()) is a
    assert pick([c, b, a], free()) is c


def test_pick_skips_a_head_that_does_not_fit() -> None:
    big = demand("big", memory=16 * G)
    gpu_hungry = demand("gpu", gpus=4)
    small = demand("small", memory=G)
    smaller = demand("smaller", memory=1)
    assert pick([big, gpu_hungry, small, smaller], free()) is small


def test_pick_nothing_fits_or_nothing_queued() -> None:
    assert pick([demand("a", memory=9 * G), demand("b", cpus=5.0)], free()) is None
    assert pick([], free()) is None


def test_pick_accepts_a_generator_and_stops_at_the_first_fit() -> None:
    consumed: list[str] = []

    def candidates() -> Any:
        for job_id in ("x", "y", "z"):
            consumed.append(job_id)
            yield demand(job_id, memory=100 * G if job_id == "x" else G)

    chosen = pick(candidates(), free())
    assert chosen is not None
    assert chosen.job_id == "y"
    assert consumed == ["x", "y"]


def test_pick_randomized_matches_a_reference() -> None:
    rng = random.Random(1)
    for _ in range(300):
        f = free(
            slots=rng.randint(0, 2),
            memory=rng.randint(0, 8) * G,
            cpus=rng.choice([0.0, 0.5, 1.0, 2.0, 4.0]),
            gpu_ids=tuple(str(i) for i in range(rng.randint(0, 4))),
        )
        queue = [
            demand(
                f"j{i}",
                memory=rng.randint(0, 8) * G,
                cpus=rng.choice([0.5, 1.0, 2.0, 4.0]),
                gpus=rng.randint(0, 4),
            )
            for i in range(rng.randint(0, 6))
        ]
        fitting = [
            d
            for d in queue
            if f.slots >= 1
            and d.memory_bytes <= f.memory_bytes
            and d.cpus <= f.cpus
            and d.gpus <= len(f.gpu_ids)
        ]
        assert pick(queue, f) == (fitting[0] if fitting else None)


# --- assign_gpus ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_ids", "count", "expected"),
    [
        (("0", "1", "2", "3"), 2, ("0", "1")),
        (("3", "1", "2", "0"), 2, ("0", "1")),
        (("10", "2", "1"), 2, ("1", "2")),  # numeric, not lexical: "2" before "10"
        (("10", "9", "11", "100"), 3, ("9", "10", "11")),
        (("10", "2"), 2, ("2", "10")),
        (("5",), 1, ("5",)),
        (("0", "1"), 0, ()),
        ((), 0, ()),
    ],
)
def test_assign_gpus_lowest_first(
    free_ids: tuple[str, ...], count: int, expected: tuple[str, ...]
) -> None:
    assert assign_gpus(free_ids, count) == expected


@pytest.mark.parametrize(("free_ids", "count"), [((), 1), (("0",), 2), (("0", "1", "2"), 4)])
def test_assign_gpus_more_than_free_raises(free_ids: tuple[str, ...], count: int) -> None:
    with pytest.raises(ValueError, match=f"^asked for {count} GPUs, {len(free_ids)} free$"):
        assign_gpus(free_ids, count)


def test_assign_gpus_accepts_a_list_and_does_not_mutate_it() -> None:
    ids = ["3", "0", "2"]
    assert assign_gpus(ids, 2) == ("0", "2")
    assert ids == ["3", "0", "2"]


def test_assign_gpus_randomized() -> None:
    rng = random.Random(0)
    for _ in range(200):
        pool = rng.sample(range(64), rng.randint(0, 16))
        free_ids = [str(i) for i in pool]
        count = rng.randint(0, len(free_ids))
        got = assign_gpus(free_ids, count)
        assert len(got) == count
        assert len(set(got)) == count
        assert set(got) <= set(free_ids)
        # Lowest first: exactly the `count` smallest numbers, ascending.
        assert [int(i) for i in got] == sorted(pool)[:count]
        with pytest.raises(ValueError):
            assign_gpus(free_ids, len(free_ids) + 1)


# --- agent/gpus.py ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "ids"),
    [
        ("0,1", ("0", "1")),
        ("0", ("0",)),
        ("3,1,2", ("3", "1", "2")),
        ("none", ()),
        ("", ()),
    ],
)
def test_configured_gpu_ids(setting: str, ids: tuple[str, ...]) -> None:
    assert configured_gpu_ids(setting) == ids


def test_auto_without_nvidia_smi_is_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert detect_gpu_ids() == ()
    assert configured_gpu_ids("auto") == ()


def test_auto_parses_nvidia_smi_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="0\n1\n\n 2 \nNo devices\n", stderr="")

    monkeypatch.setattr(gpus.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(gpus.subprocess, "run", fake_run)
    assert configured_gpu_ids("auto") == ("0", "1", "2")
    assert calls == [["/usr/bin/nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]]


def test_auto_when_nvidia_smi_fails_is_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.CalledProcessError(9, args)

    monkeypatch.setattr(gpus.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(gpus.subprocess, "run", failing_run)
    assert detect_gpu_ids() == ()


CAP = Capacity(slots=4, memory_bytes=16 * G, cpus=8.0, gpu_ids=("0", "1", "2", "3"))


def free_after(cap: Capacity, held: list[tuple[int, float, tuple[str, ...]]]) -> Free:
    """What the ledger reports as free once these (memory, cpus, gpu ids) attempts are held."""
    return cap.remaining(
        count=len(held),
        memory_bytes=sum(memory for memory, _, _ in held),
        cpus=sum(cpus for _, cpus, _ in held),
        gpus={gpu for _, _, gpus in held for gpu in gpus},
    )


def test_free_after_nothing_held_is_everything() -> None:
    assert free_after(CAP, []) == Free(
        slots=4, memory_bytes=16 * G, cpus=8.0, gpu_ids=("0", "1", "2", "3")
    )


def test_free_after_subtracts_what_is_held() -> None:
    held = [(4 * G, 2.0, ("1",)), (2 * G, 1.5, ("3", "0")), (G, 0.5, ())]
    assert free_after(CAP, held) == Free(slots=1, memory_bytes=9 * G, cpus=4.0, gpu_ids=("2",))


def test_free_after_keeps_capacity_order_of_gpus() -> None:
    cap = Capacity(slots=2, memory_bytes=G, cpus=1.0, gpu_ids=("3", "1", "2", "0"))
    assert free_after(cap, [(0, 0.0, ("1",))]).gpu_ids == ("3", "2", "0")


def test_free_after_everything_held_fits_nothing() -> None:
    held = [(8 * G, 4.0, ("0", "1")), (8 * G, 4.0, ("2", "3"))]
    f = free_after(Capacity(slots=2, memory_bytes=16 * G, cpus=8.0, gpu_ids=CAP.gpu_ids), held)
    assert f == Free(slots=0, memory_bytes=0, cpus=0.0, gpu_ids=())
    assert not f.fits(demand(memory=0, cpus=0.0, gpus=0))


def test_free_after_randomized_conserves_resources() -> None:
    rng = random.Random(2)
    for _ in range(200):
        ids = tuple(str(i) for i in range(rng.randint(0, 8)))
        cap = Capacity(slots=8, memory_bytes=64 * G, cpus=32.0, gpu_ids=ids)
        remaining = list(ids)
        rng.shuffle(remaining)
        held = []
        for _ in range(rng.randint(0, 5)):
            take = [remaining.pop() for _ in range(rng.randint(0, len(remaining)))]
            held.append((rng.randint(0, 8) * G, rng.choice([0.5, 1.0, 2.0]), tuple(take)))
        f = free_after(cap, held)
        assert f.slots == 8 - len(held)
        assert f.memory_bytes == 64 * G - sum(m for m, _, _ in held)
        assert f.cpus == pytest.approx(32.0 - sum(c for _, c, _ in held))
        busy = [g for _, _, gs in held for g in gs]
        assert f.gpu_ids == tuple(g for g in ids if g not in busy)
        assert len(f.gpu_ids) + len(busy) == len(ids)


# --- backfill and the starvation bound (issue 4) -----------------------------------------------

BIG = Demand("big", 8, 1.0, 4, waiting_since=100.0)
SMALL = Demand("small", 1, 1.0, 1, waiting_since=150.0)
HUGE = Demand("huge", 8, 1.0, 99, waiting_since=0.0)  # more GPUs than this agent will ever have
CAPACITY = Free(slots=4, memory_bytes=16, cpus=8.0, gpu_ids=("0", "1", "2", "3"))
PARTLY_BUSY = Free(slots=3, memory_bytes=16, cpus=8.0, gpu_ids=("2", "3"))


def test_the_head_runs_when_it_fits() -> None:
    assert pick([BIG, SMALL], CAPACITY, capacity=CAPACITY, now=200, starvation_seconds=60) is BIG


def test_a_smaller_job_backfills_while_the_head_has_not_waited_long() -> None:
    chosen = pick([BIG, SMALL], PARTLY_BUSY, capacity=CAPACITY, now=130, starvation_seconds=60)
    assert chosen is SMALL


def test_once_the_head_has_waited_past_the_bound_nothing_new_starts() -> None:
    assert (
        pick([BIG, SMALL], PARTLY_BUSY, capacity=CAPACITY, now=160, starvation_seconds=60) is None
    )
    # ...until enough is free for the head, which then goes first.
    assert pick([BIG, SMALL], CAPACITY, capacity=CAPACITY, now=500, starvation_seconds=60) is BIG


def test_a_job_that_can_never_fit_here_does_not_block_the_queue() -> None:
    chosen = pick([HUGE, SMALL], PARTLY_BUSY, capacity=CAPACITY, now=1e9, starvation_seconds=60)
    assert chosen is SMALL


def test_without_a_bound_backfill_is_unlimited() -> None:
    assert pick([BIG, SMALL], PARTLY_BUSY, capacity=CAPACITY, now=1e9) is SMALL
