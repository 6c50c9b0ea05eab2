"""Fair shares of the engine between tenants (service/limits.py, FairShare; issue 42, docs/SECURITY.md 18).

One tenant holding its 16 allowed requests made another tenant's /generate take 24.3 s (1-7 s around it): all
17 ran in one batch, and a batch's step grows with every sequence in it. These drive the share directly.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import GenerationTimeout
from service.limits import Admission


async def _hold(admission: Admission, tenant: str, entered: list, release: asyncio.Event) -> None:
    ticket = admission.admit(tenant)
    try:
        async with admission.fair_share.slot(tenant):
            entered.append(tenant)
            await release.wait()
    finally:
        ticket.release()


def test_a_tenant_alone_has_every_slot_and_another_gets_in_at_once_while_it_holds_them():
    async def scenario() -> None:
        admission = Admission(max_queue=64, per_tenant=20, engine_slots=16)
        entered: list[str] = []
        hog_release, other_release = asyncio.Event(), asyncio.Event()
        hog = [asyncio.create_task(_hold(admission, "hog", entered, hog_release)) for _ in range(16)]
        await asyncio.sleep(0.01)
        assert entered.count("hog") == 16  # alone: its whole concurrency runs
        other = asyncio.create_task(_hold(admission, "other", entered, other_release))
        await asyncio.sleep(0.01)
        assert entered[-1] == "other"  # beside the hog's 16, not behind them
        assert admission.fair_share.share() == 8
        more = [asyncio.create_task(_hold(admission, "hog", entered, hog_release)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert entered.count("hog") == 16  # over its share: the new ones wait
        other_release.set()
        await other
        await asyncio.sleep(0.01)
        assert entered.count("hog") == 16  # the other tenant is still active (its window): they still wait
        hog_release.set()
        await asyncio.gather(*hog, *more)
        assert entered.count("hog") == 18

    asyncio.run(scenario())


def test_a_request_waiting_for_its_share_times_out_with_a_504_and_leaves_no_trace():
    async def scenario() -> None:
        admission = Admission(max_queue=64, per_tenant=16, engine_slots=2)
        admission.admit("other").release()  # another tenant active: the hog's share is 2 // 2
        release = asyncio.Event()
        entered: list[str] = []
        holder = asyncio.create_task(_hold(admission, "hog", entered, release))
        await asyncio.sleep(0.01)
        ticket = admission.admit("hog")
        with pytest.raises(GenerationTimeout):
            async with admission.fair_share.slot("hog", deadline=time.monotonic() + 0.05):
                pytest.fail("entered past its share")
        ticket.release()
        release.set()
        await holder
        assert entered == ["hog"] and not admission.fair_share._running and not admission.fair_share._waiting

    asyncio.run(scenario())


def test_a_tenant_stays_active_between_its_requests_and_its_share_is_given_back_after_its_window():
    """Counted only while it had a request in, a tenant sending one request after another gave its share back in
    every gap, and the other tenant filled the engine again before its next request."""
    async def scenario() -> None:
        admission = Admission(max_queue=64, per_tenant=16, engine_slots=4)
        admission.fair_share.window_s = 0.3
        entered: list[str] = []
        release = asyncio.Event()
        admission.admit("probe").release()  # a request just ended: still active
        hog = [asyncio.create_task(_hold(admission, "hog", entered, release)) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert entered.count("hog") == 2  # 4 // 2 while the probe is active
        await asyncio.sleep(0.4)
        admission.admit("hog").release()  # any request ending lets the waiting in once the window has passed
        await asyncio.sleep(0.01)
        assert entered.count("hog") == 4 and admission.fair_share.share() == float("inf")
        release.set()
        await asyncio.gather(*hog)

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5), st.integers(1, 6),
                                   st.booleans()), min_size=1, max_size=40),
       slots=st.integers(1, 8))
def test_no_tenant_enters_past_its_share_and_every_request_ends(requests, slots):
    """Property: for any arrivals (tenant, arrival step, length in steps, cancelled while it waits or runs), a
    request enters only while its tenant is below its share, every request ends, and nothing is left held."""
    async def scenario() -> None:
        admission = Admission(max_queue=1000, per_tenant=1000, engine_slots=slots)
        share = admission.fair_share
        enter = share._enter

        def checked_enter(key: str) -> None:  # every way in: below the tenant's share at that moment
            assert share._running[key] < share.share()
            enter(key)

        share._enter = checked_enter

        async def one(tenant: str, arrive: int, steps: int, cancelled: bool) -> None:
            for _ in range(arrive):
                await asyncio.sleep(0)
            ticket = admission.admit(tenant)
            try:
                async with share.slot(tenant):
                    for _ in range(steps):
                        await asyncio.sleep(0)
            finally:
                ticket.release()

        tasks = [asyncio.create_task(one(*r)) for r in requests]
        for task, (*_, cancelled) in zip(tasks, requests, strict=True):
            if cancelled:
                asyncio.get_running_loop().call_soon(task.cancel)
        done, pending = await asyncio.wait(tasks, timeout=10)
        assert not pending
        for task in done:
            assert task.cancelled() or task.exception() is None
        assert not share._running and not share._waiting and not admission._by_tenant

    asyncio.run(scenario())
