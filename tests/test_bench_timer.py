"""bench.common.Timer: every candidate takes every place in the round order (order effects are
spread, not pinned on one candidate), and every sample is kept under its candidate's name."""

from __future__ import annotations

from bench.common import Timer


def test_rounds_rotate_the_order() -> None:
    seen: list[str] = []
    timer = Timer(rounds=3)
    timer.run({name: (lambda n=name: seen.append(n)) for name in "abc"}, warmup=0)
    assert seen == list("abcbcacab")
    assert {k: len(v) for k, v in timer.samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_fixed_order_when_asked() -> None:
    seen: list[str] = []
    Timer(rounds=2, rotate=False).run({name: (lambda n=name: seen.append(n)) for name in "ab"}, warmup=1)
    assert seen == list("ababab")  # warm-up, then two rounds
