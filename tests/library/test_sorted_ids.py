"""SortedIds: whatever the mix of additions, removals and reads, the order read is the ids held, sorted."""

from __future__ import annotations

import random

from services.library.sorted_ids import SortedIds


def test_the_order_read_is_always_the_held_ids_sorted_through_bursts_removals_and_reads() -> None:
    rng = random.Random(17)
    ids, held = SortedIds(f"start-{i}" for i in range(50)), {f"start-{i}" for i in range(50)}
    for step in range(400):
        burst = rng.choice([1, 3, 64, 65, 300])  # a few are inserted, many merged in one sort
        for _ in range(burst):
            tool_id = f"t-{rng.randrange(10**9)}"
            if tool_id not in held:
                ids.add(tool_id)
                held.add(tool_id)
        for tool_id in rng.sample(sorted(held), k=min(len(held), rng.choice([0, 1, 5]))):
            ids.discard(tool_id)  # some not merged yet, some merged
            held.discard(tool_id)
        ids.discard("never-held")
        assert len(ids) == len(held)
        if step % 3:
            assert ids.ordered() == sorted(held), step
    assert ids.ordered() == sorted(held)
