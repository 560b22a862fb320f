"""How long the look-alike guard takes to screen a new name, against how
many names, for short release tags and for long ones.

quaylock only (Distribution has no such guard): the point is the cost per
push that `tags.lookalike_max_names` bounds. Prints one line per case:
building the index (once per repository every 60 s) and screening one
candidate (every new tag), median of 21 runs.

    .venv/bin/python bench/lookalike.py
"""

from __future__ import annotations

import random
import statistics
import time

from quaylock.policy.lookalike import NameIndex


def _median_ms(action, runs: int = 21) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    rng = random.Random(7)
    cases = {
        "release tags (1.2.345)": lambda i: f"{rng.randint(0, 9)}.{rng.randint(0, 99)}.{i}",
        "tags of 40 characters": lambda i: f"{i}-" + "".join(rng.choices("abcdef0123456789", k=38)),
        "tags of 106 characters": lambda i: f"{i}.0-" + "".join(rng.choices("abcdef0123456789", k=100)),
    }  # fmt: skip
    for label, make in cases.items():
        for count in (1_000, 10_000):
            names = [make(i) for i in range(count)]
            build = _median_ms(lambda: NameIndex(names, "tag"), runs=5)
            index = NameIndex(names, "tag")
            probe = make(count + 1)
            screen = _median_ms(lambda: index.find(probe))
            print(f"{label:<24} {count:>6} names: index {build:7.1f} ms, "
                  f"screen {screen:6.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
