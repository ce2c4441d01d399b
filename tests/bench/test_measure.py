"""interleaved_medians times paths round-robin, after warm-up rounds that do not count."""

from __future__ import annotations

from qkvlab.bench.measure import interleaved_medians


def test_paths_run_in_turn_and_warm_up_rounds_are_dropped():
    calls: list[str] = []
    out = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
