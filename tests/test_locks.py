"""ResourceLocks: one asyncio lock per resource id; try_hold never waits."""

from __future__ import annotations

import asyncio

from ebsemu.locks import ResourceLocks


def test_holders_of_one_id_take_turns_and_other_ids_go_on() -> None:
    locks = ResourceLocks()
    order: list[str] = []

    async def use(resource_id: str, name: str, pause: float) -> None:
        async with locks.hold(resource_id):
            order.append(f"{name} in")
            await asyncio.sleep(pause)
            order.append(f"{name} out")

    async def scenario() -> None:
        await asyncio.gather(
            use("vol-a", "first", 0.05), use("vol-a", "second", 0), use("vol-b", "other", 0)
        )

    asyncio.run(scenario())
    assert order.index("first out") < order.index("second in")
    assert order.index("other out") < order.index("first out")


def test_try_hold_takes_a_free_lock_and_never_waits_for_a_busy_one() -> None:
    locks = ResourceLocks()

    async def scenario() -> list[bool]:
        seen: list[bool] = []
        async with locks.hold("vol-a"):
            async with locks.try_hold("vol-a") as mine:
                seen.append(mine)  # held: not taken
            async with locks.try_hold("vol-b") as mine:
                seen.append(mine)  # free: taken …
                async with locks.try_hold("vol-b") as again:
                    seen.append(again)  # … so busy now
        async with locks.try_hold("vol-a") as mine:
            seen.append(mine)  # released: free again
        return seen

    assert asyncio.run(scenario()) == [False, True, False, True]


def test_a_waiter_cancelled_leaves_no_lock_behind() -> None:
    locks = ResourceLocks()

    async def scenario() -> bool:
        async with locks.hold("vol-a"):
            waiting = asyncio.create_task(_enter(locks, "vol-a"))
            await asyncio.sleep(0)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        async with locks.try_hold("vol-a") as mine:
            return mine

    assert asyncio.run(scenario())


async def _enter(locks: ResourceLocks, resource_id: str) -> None:
    async with locks.hold(resource_id):
        pass
