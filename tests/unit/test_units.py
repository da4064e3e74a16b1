"""Memory sizes (agent/units.py)."""

from __future__ import annotations

import random

import pytest

from agent.core.units import format_memory, human_size, parse_memory

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4g", 4 * G),
        ("4G", 4 * G),
        ("512m", 512 * M),
        ("1.5g", 3 * G // 2),
        ("0.5m", 512 * K),
        ("1024k", M),
        ("2GiB", 2 * G),
        ("2gib", 2 * G),
        ("2gb", 2 * G),
        ("2GB", 2 * G),
        ("1t", T),
        ("3TiB", 3 * T),
        ("1000", 1000),
        ("1000b", 1000),
        ("1000B", 1000),
        ("  4g  ", 4 * G),
        ("4 g", 4 * G),
        ("1", 1),
        ("007m", 7 * M),
        ("2Gi", 2 * G),
        ("512Mi", 512 * M),
        ("512mi", 512 * M),
        ("1Ti", T),
        ("64Ki", 64 * K),
    ],
)
def test_parse_memory(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("value", [1, 1000, 4 * G, 2**40 + 3])
def test_parse_memory_int_is_bytes(value: int) -> None:
    assert parse_memory(value) == value


@pytest.mark.parametrize(
    "text",
    [
        "lots",
        "",
        "   ",
        "g",
        "4x",
        "4gg",
        "-1g",
        "1e9",
        "4 gigabytes",
        "1,5g",
        "1.g",
        ".5g",
        "4kb4",
        "2i",
        "2Gx",
        "2Gib4",
    ],
)
def test_parse_memory_rejects_non_sizes_and_names_the_units(text: str) -> None:
    with pytest.raises(ValueError, match="not a size") as info:
        parse_memory(text)
    message = str(info.value)
    assert repr(text) in message
    assert "k, m, g or t" in message
    assert "'512m'" in message


@pytest.mark.parametrize("value", ["0", "0g", "0.0m", "0.0001k", 0, -1, -4 * G])
def test_parse_memory_rejects_zero_and_negative(value: str | int) -> None:
    with pytest.raises(ValueError, match=r"^memory must be positive$"):
        parse_memory(value)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (4 * G, "4g"),
        (512 * M, "512m"),
        (3 * G // 2, "1536m"),
        (M, "1m"),
        (K, "1k"),
        (1024 * G, "1t"),
        (2 * T, "2t"),
        (1000, "1000"),
        (1025, "1025"),
        (1, "1"),
        (G + K, "1048577k"),
        (0, "0"),
    ],
)
def test_format_memory(size: int, text: str) -> None:
    assert format_memory(size) == text


@pytest.mark.parametrize("unit", ["k", "m", "g", "t"])
@pytest.mark.parametrize("n", [1, 3, 7, 1000, 1023])
def test_round_trip_exact_units(n: int, unit: str) -> None:
    text = f"{n}{unit}"
    assert format_memory(parse_memory(text)) == text


def test_round_trip_random_sizes() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        size = rng.choice([K, M, G, T, 1]) * rng.randint(1, 100_000)
        text = format_memory(size)
        assert parse_memory(text) == size
        # The shortest exact form: the number is not a multiple of 1024 unless no larger unit.
        number = int(text.rstrip("kmgt"))
        assert number % 1024 != 0 or text.endswith("t")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (23635508 * K, "22.5 GiB"),
        (256 * M, "256 MiB"),
        (5 * T, "5 TiB"),
        (3000 * T, "3000 TiB"),
    ],
)
def test_human_size_is_how_people_read_sizes(size: int, text: str) -> None:
    assert human_size(size) == text
