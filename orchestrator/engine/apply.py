"""Commands and reloads a supervisor receives from above: apply a new spec, restart a child.

A mixin of Supervisor: it acts on the supervisor's slots and sequences, and keeps
the reload machinery apart from the start/exit/restart core.
"""
from __future__ import annotations

from typing import Callable, List

from orchestrator.policy.plan import plan_level
from orchestrator.engine.slot import Slot
from orchestrator.spec.model import NodeSpec, TreeContext


class ApplyMixin:
    def command(self, message: tuple) -> None:
        """Run a command for a node in this subtree, or pass it down to the supervisor owning it."""
        kind, path = message[0], message[1]
        if kind == "apply":
            self._when_idle(lambda: self.apply(message[1], message[2], message[3]))
            return
        parent, _, name = path.rpartition("/")
        if parent == self.node.path:
            # Looked up when it runs, not now: a reload queued ahead of it may replace
            # the slot, and acting on the old one would start a second process for the node.
            self._when_idle(lambda: self._node_command(kind, name))
            return
        for slot in self.slots:
            if slot.running is not None and slot.running.uplink is not None \
                    and path.startswith(slot.spec.path + "/"):
                self._send_down(slot, message)
                return

    def _when_idle(self, action: Callable[[], None]) -> None:
        if self.stopping:
            return
        if self._busy():
            self._queued.append(action)
        else:
            action()

    def _node_command(self, kind: str, name: str) -> None:
        """Restart one child; orch causes this stop, so it never counts as a failure.

        (`orch stop`/`orch start` arrive as an `apply` with the node's `held` flag.)
        """
        slot = next((slot for slot in self.slots if slot.spec.name == name), None)
        if slot is None:
            return  # a reload removed it meanwhile
        if kind == "restart" and not slot.spec.held:
            self._cancel_retry(slot)
            slot.restarts += 1
            self._operate(stop=[slot], start=[slot])

    def _operate(self, stop: List[Slot], start: List[Slot], then: Callable[[], None] = lambda: None) -> None:
        def then_start() -> None:
            self._sequence = None
            self._start_in_order([slot for slot in start if slot.running is None and not slot.spec.held],
                                 then)
        self._run_sequence(stop, then_start)

    def apply(self, node: NodeSpec, tree: TreeContext, generation: int) -> None:
        """Go from the current spec to `node` touching only what changed (see plan.py).

        Acknowledged upward as ("applied", path, generation) once our own stops and
        starts are done and every supervisor child we passed a part to has acknowledged.
        """
        self._generation, self._applied_here, self._acks_due = generation, False, set()
        level = plan_level(self.node, node)
        self.node, self.tree = node, tree
        self.window.intensity = node.intensity
        old_slots = {slot.spec.name: slot for slot in self.slots}
        slots, held, released = [], [], []
        for child in node.children:
            slot = old_slots.get(child.name)
            if child.name in level.keep:
                (held if child.held and not slot.spec.held else
                 released if slot.spec.held and not child.held else []).append(slot)
                self._update_in_place(slot, child)
            else:
                slot = Slot(child, restarts=slot.restarts + 1 if slot else 0)
            slots.append(slot)
        going = [old_slots[name] for name in level.remove + level.replace]
        for slot in going:
            slot.retired = True  # never to be started again: its node is gone or replaced
        for slot in going + held:
            self._cancel_retry(slot)
        self._retiring += [slot for slot in going if slot.running is not None]
        self.slots = slots
        fresh = [slot for slot in slots if slot.spec.name in level.add + level.replace] + released
        order = self._old_order(old_slots)
        self._operate(stop=sorted(going + held, key=order, reverse=True),
                      start=[slot for slot in slots if slot in fresh], then=self._applied_locally)

    def _applied_locally(self) -> None:
        self._applied_here = True
        self._maybe_acknowledge()

    def _maybe_acknowledge(self) -> None:
        if self._applied_here and not self._acks_due and self._generation:
            self.uplink.applied(self.node.path, self._generation)

    @staticmethod
    def _old_order(old_slots):
        order = {id(slot): index for index, slot in enumerate(old_slots.values())}
        return lambda slot: order[id(slot)]

    def _update_in_place(self, slot: Slot, spec: NodeSpec) -> None:
        changed = slot.spec != spec
        slot.spec = spec
        if changed and spec.is_supervisor and slot.running is not None:
            self._acks_due.add(slot.spec.path)
            self._send_down(slot, ("apply", spec, self.tree, self._generation))

    def _send_down(self, slot: Slot, message: tuple) -> None:
        try:
            slot.running.uplink.send(message)
        except OSError:
            pass  # it is exiting; its exit is handled like any other

