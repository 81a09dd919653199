"""State machines as tables: one helper for every machine of the core.

Each machine (the transport connection, the client, a server's connection, its
delivery window) is an :class:`enum.Enum` of states, an Enum of inputs and a
``(state, input) -> state`` table, in the manner of h11's ``_state.py``. A pair
that is not in the table is not allowed: :meth:`StateMachine.next` raises
:class:`~udpchat_proto.errors.LocalProtocolError`, since only this code feeds the
machines (remote input is checked before it becomes an input).

The diagrams in ``docs/STATES.md`` are drawn from the tables
(:meth:`StateMachine.mermaid`); a test fails when they drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

from .errors import LocalProtocolError

__all__ = ["IdentityEnum", "StateMachine"]


class IdentityEnum(enum.Enum):
    """An Enum whose members hash by identity (a C slot) rather than by name (a
    Python call in ``enum.Enum``): the machines' tables and timers look states and
    inputs up several times per packet. Members are singletons compared by
    identity, so the two hashes agree on what is equal."""

    __hash__ = object.__hash__


S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741


@attrs.frozen(kw_only=True)
class StateMachine(Generic[S, I]):
    """A named transition table."""

    name: str
    """What the machine describes (a heading in ``docs/STATES.md``)."""
    initial: tuple[S, ...]
    """The states an instance may start in."""
    transitions: Mapping[tuple[S, I], S]
    """``(state, input) -> next state``; a pair not listed is not allowed."""
    end_states: frozenset[S] = frozenset()
    """States in which the machine is over (for its user)."""

    def next(self, state: S, event: I) -> S:
        """The state after ``event`` in ``state``.

        Raises:
            LocalProtocolError: the pair is not in the table.
        """
        try:
            return self.transitions[state, event]
        except KeyError:
            raise LocalProtocolError(
                f"{self.name}: cannot {event.value} in state {state.value}"
            ) from None

    def allows(self, state: S, event: I) -> bool:
        """Whether ``event`` is allowed in ``state``."""
        return (state, event) in self.transitions

    @property
    def states(self) -> list[S]:
        """Every state of the machine, in declaration order."""
        return list(type(self.initial[0]))

    def mermaid(self) -> str:
        """The table as a Mermaid state diagram (``stateDiagram-v2``)."""
        lines = ["stateDiagram-v2"]
        lines += [f"    [*] --> {state.name}" for state in self.initial]
        for (state, event), after in self.transitions.items():
            lines.append(f"    {state.name} --> {after.name}: {event.value}")
        sources = {state for state, _event in self.transitions}
        lines += [f"    {state.name} --> [*]" for state in self.states if state not in sources]
        return "\n".join(lines)
