"""The one timing module: seeded queries, rounds, turns that rotate, and a speed-up interval load cannot bias."""

from __future__ import annotations

import time

import pytest

from slimformer.timing import (
    batch1_latencies_ms,
    flat,
    interleaved_latencies_ms,
    sample_queries,
    speedup_interval,
    split_rounds,
)


def test_queries_are_seeded_and_repeat_when_short() -> None:
    texts = ["a", "b", "c"]
    assert sample_queries(texts, 7, seed=1) == sample_queries(texts, 7, seed=1)
    drawn = sample_queries(texts, 7, seed=1)
    assert len(drawn) == 7 and drawn[:3] == drawn[3:6] and sorted(drawn[:3]) == texts
    assert sample_queries([], 5) == []


def test_rounds_split_evenly_and_never_empty() -> None:
    assert [len(r) for r in split_rounds(list("abcdefg"), 3)] == [3, 2, 2]
    assert split_rounds(["a", "b"], 5) == [["a"], ["b"]]
    assert flat([[1.0], [2.0, 3.0]]) == [1.0, 2.0, 3.0]


def test_turns_rotate_and_each_model_gets_every_round() -> None:
    order: list[tuple[str, tuple[str, ...]]] = []

    def timer(name: str):
        def time_round(queries: list[str], warmup: int) -> list[float]:
            order.append((name, tuple(queries)))
            return [float(len(q)) for q in queries]

        return time_round

    rounds = split_rounds(["x", "yy", "zzz"], 3)
    timings = interleaved_latencies_ms({"a": timer("a"), "b": timer("b"), "c": timer("c")}, rounds)
    assert [name for name, _ in order] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert timings["b"] == [[1.0], [2.0], [3.0]]


def test_a_turn_lasts_at_least_its_minimum_with_its_queries_repeated_in_order() -> None:
    class Sleeper:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def predict(self, texts: list[str]) -> None:
            self.seen.append(texts[0])
            time.sleep(0.002)

    sleeper = Sleeper()
    timings = batch1_latencies_ms(sleeper, ["a", "b", "c"], warmup=0, min_seconds=0.03)
    # 2 ms a call: whole passes over the queries until 30 ms have gone, so 15 calls or more, a multiple of 3
    assert len(timings) >= 15 and len(timings) % 3 == 0 and all(t >= 2.0 for t in timings)
    assert sleeper.seen[:6] == ["a", "b", "c", "a", "b", "c"]
    # without a minimum, each query once
    assert len(batch1_latencies_ms(Sleeper(), ["a", "b"], warmup=0)) == 2


def test_speedup_is_the_median_of_round_ratios_and_load_widens_its_interval() -> None:
    quiet_teacher = [[10.0] * 5 for _ in range(8)]
    quiet_student = [[1.0] * 5 for _ in range(8)]
    quiet = speedup_interval(quiet_teacher, quiet_student)
    assert quiet["speedup"] == 10.0 and quiet["low"] == quiet["high"] == 10.0
    # two rounds hit by a burst of load: both models slowed 3x in those rounds, the ratio unchanged there
    loaded_teacher = [[30.0] * 5 if i in (2, 5) else [10.0] * 5 for i in range(8)]
    loaded_student = [[3.0] * 5 if i in (2, 5) else [1.0] * 5 for i in range(8)]
    assert speedup_interval(loaded_teacher, loaded_student)["speedup"] == 10.0
    # a burst that hit only the student in one round moves the median not at all, and the interval a little
    noisy_student = [[2.0] * 5 if i == 3 else [1.0] * 5 for i in range(8)]
    noisy = speedup_interval(quiet_teacher, noisy_student)
    assert noisy["speedup"] == 10.0 and noisy["low"] <= 10.0 <= noisy["high"]
    with pytest.raises(ValueError, match="no round"):
        speedup_interval([[]], [[]])
