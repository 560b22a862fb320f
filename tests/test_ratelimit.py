"""The rate-limit buckets on their own: the GCRA's arithmetic, and buckets
in shared memory that several processes charge together."""

from __future__ import annotations

import multiprocessing

import pytest

from quaylock.policy.buckets import LocalBuckets, Rate, SharedBuckets, gcra


def test_a_burst_passes_then_the_rate_holds():
    rate = Rate(per_second=10, burst=5)
    tat, now, verdicts = 0.0, 100.0, []
    for _ in range(7):
        tat, verdict = gcra(tat, now, rate, 1)
        verdicts.append(verdict)
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    refused = verdicts[5]
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.reset == pytest.approx(0.5)
    # A tenth of a second later one more request passes, and only one.
    tat, verdict = gcra(tat, now + 0.1, rate, 1)
    assert verdict.allowed
    assert not gcra(tat, now + 0.1, rate, 1)[1].allowed


def test_a_costly_request_takes_several_tokens_and_never_more_than_the_burst():
    rate = Rate(per_second=1, burst=10)
    tat, verdict = gcra(0.0, 50.0, rate, 8)
    assert verdict.allowed and verdict.remaining == 2
    tat, verdict = gcra(tat, 50.0, rate, 3)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(1.0)
    assert not gcra(0.0, 50.0, rate, 11)[1].allowed


def _charge(path, times: int, out) -> None:
    buckets = SharedBuckets(path, slots=1024, clock=lambda: 1000.0)
    out.put(
        sum(buckets.take_now("user:eve", Rate(0.001, 50)).allowed for _ in range(times))
    )


def test_shared_buckets_hold_across_processes(tmp_path):
    path = tmp_path / "rate.table"
    SharedBuckets(path, slots=1024).close()
    out = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(
            target=_charge, args=(path, 40, out)
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    allowed = [out.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert sum(allowed) == 50  # 120 asked for; the burst is 50 in all


def test_keys_are_apart_and_a_refilled_bucket_frees_its_slot(tmp_path):
    now = [0.0]
    buckets = SharedBuckets(tmp_path / "t", slots=16, clock=lambda: now[0])
    rate = Rate(per_second=1, burst=1)
    assert buckets.take_now("a", rate).allowed
    assert not buckets.take_now("a", rate).allowed
    assert buckets.take_now("b", rate).allowed  # another key, its own bucket
    # Far more keys than slots: each still gets its first request.
    assert all(buckets.take_now(f"k{i}", rate).allowed for i in range(100))
    now[0] += 2
    assert buckets.take_now("a", rate).allowed


def test_a_table_of_another_size_starts_afresh(tmp_path):
    path = tmp_path / "t"
    first = SharedBuckets(path, slots=16, clock=lambda: 5.0)
    assert first.take_now("a", Rate(1, 1)).allowed
    first.close()
    again = SharedBuckets(path, slots=32, clock=lambda: 5.0)
    assert again.take_now("a", Rate(1, 1)).allowed


def test_local_buckets_forget_the_least_recently_used_key_first():
    now = [0.0]
    buckets = LocalBuckets(keys=2, clock=lambda: now[0])
    rate = Rate(per_second=1, burst=1)
    assert buckets.take_now("a", rate).allowed
    assert buckets.take_now("b", rate).allowed
    assert not buckets.take_now("a", rate).allowed  # a is used again: kept
    assert buckets.take_now("c", rate).allowed  # b goes
    assert not buckets.take_now("a", rate).allowed
    assert buckets.take_now("b", rate).allowed  # forgotten: a full bucket


def test_leases_never_pass_the_limit_and_cost_little_precision(tmp_path):
    import asyncio

    from quaylock.policy.buckets import Leases

    wall, mono = [1000.0], [0.0]
    shared = SharedBuckets(tmp_path / "table", slots=1024, clock=lambda: wall[0])
    # Two workers' leases over one shared table, at one instant.
    workers = [Leases(shared, clock=lambda: mono[0]) for _ in range(2)]
    rate = Rate(per_second=10, burst=320)  # leases of 16 (320 // 16 = 20, capped)

    async def charge(count: int) -> list:
        return [await workers[i % 2].take("k", rate) for i in range(count)]

    verdicts = asyncio.run(charge(400))
    allowed = sum(v.allowed for v in verdicts)
    # Never past the burst; at most one unused lease per worker short of it.
    assert 320 - 2 * 16 <= allowed <= 320
    assert all(v.remaining >= 0 for v in verdicts)
    # Leases left half used, then the bucket refills and the leases run
    # out: what they left is not counted again on top of a full bucket.
    mono[0], wall[0] = 5.0, 1064.0
    assert all(v.allowed for v in asyncio.run(charge(6)))
    mono[0], wall[0] = 10.0, 1096.0
    verdicts = asyncio.run(charge(400))
    assert 320 - 2 * 16 <= sum(v.allowed for v in verdicts) <= 320


def test_small_bursts_are_not_leased_and_stay_exact(tmp_path):
    import asyncio

    from quaylock.policy.buckets import Leases

    shared = SharedBuckets(tmp_path / "table", slots=1024, clock=lambda: 1000.0)
    workers = [Leases(shared) for _ in range(2)]
    rate = Rate(per_second=1, burst=10)

    async def charge() -> int:
        return sum([(await workers[i % 2].take("k", rate)).allowed for i in range(30)])

    assert asyncio.run(charge()) == 10
