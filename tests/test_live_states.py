"""The client's map of live task states: weak, so a state nobody holds drops out."""

from __future__ import annotations

import gc

from kiemashup._handle import LiveStates, TaskState


def test_a_state_lives_while_held_and_drops_out_after() -> None:
    states = LiveStates()
    held = TaskState("a")
    states["a"] = held
    states["b"] = TaskState("b")  # nobody holds it
    gc.collect()
    assert states.get("a") is held
    assert states.get("b") is None
    assert states.get("never") is None
    assert states.values() == [held]
    assert len(states) == 1
    del held
    gc.collect()
    assert states.get("a") is None
    assert states.values() == []
    assert len(states) == 0


def test_a_replaced_state_dying_does_not_remove_its_successor() -> None:
    states = LiveStates()
    old = TaskState("a")
    states["a"] = old
    new = TaskState("a")
    states["a"] = new
    del old
    gc.collect()
    assert states.get("a") is new
    assert len(states) == 1


def test_the_map_keeps_no_state_alive_and_dies_with_its_client() -> None:
    states = LiveStates()
    state = TaskState("a")
    states["a"] = state
    del states
    gc.collect()
    del state  # the callback of a dead map's reference must not fail
    gc.collect()


def test_a_state_dying_on_another_thread_never_removes_a_newer_live_one() -> None:
    """The weakref callback only notes the id; the entry goes on the owner's next use,
    and only if it is still dead (a background-loop client, a handle dropped elsewhere)."""
    import threading

    states = LiveStates()
    old = TaskState("a")
    states["a"] = old
    box = [old]
    del old
    dropper = threading.Thread(target=box.clear)  # the last reference dies on that thread
    dropper.start()
    dropper.join()
    gc.collect()
    assert states.get("a") is None
    new = TaskState("a")
    states["a"] = new  # purges the dead entry first, then keeps the new one
    assert states.get("a") is new
    assert states.values() == [new]
    assert len(states) == 1
