"""Password prompts pending at once are bounded per user and in all (pure)."""

from __future__ import annotations

from svirtd.authz import PromptSlots


def test_one_prompt_per_user_and_a_cap_in_all() -> None:
    slots = PromptSlots(per_user=1, total=2)
    assert slots.take(1000)
    assert not slots.take(1000)  # the same user again: asked without a prompt
    assert slots.take(1001)
    assert not slots.take(1002)  # the cap in all
    slots.give_back(1000)
    assert slots.take(1002)  # a freed slot is anybody's
    assert not slots.take(1000)  # ... and the cap holds again
    slots.give_back(1001)
    slots.give_back(1002)
    assert slots.take(1000) and slots.take(1001)  # all given back: every user may be asked again
