"""What ``udpchat-cli chat`` shows, without the screen: conversations, unread counts,
presence and invitations.

:class:`ChatModel` is fed what the server says (messages, lists, pushes) and what
the person does (open a conversation, scroll away); the screen only draws it. A
conversation is a friend (direct messages), a room (``#name``), or a user opened
with ``/msg``. Messages are kept once each, by id, in the order they were sent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import attrs

from udpchat_proto import messages as m
from udpchat_proto.chat import is_room

__all__ = ["ChatModel", "Conversation"]


def _sort_key(message: m.ChatMessage) -> tuple[object, bytes]:
    return (message.sent_at, message.id)


@attrs.define
class Conversation:
    """One conversation of the sidebar, and its messages."""

    name: str
    """A username, or a room (``#name``)."""
    messages: list[m.ChatMessage] = attrs.Factory(list)
    """Oldest first."""
    ids: set[bytes] = attrs.Factory(set)
    unread: int = 0
    online: bool = False
    """A friend with a live connection (always False for a room)."""
    friend: bool = False
    marker: bytes | None = None
    """The first message that arrived unread: the "new messages" line goes above it."""

    @property
    def is_room(self) -> bool:
        return is_room(self.name)

    def add(self, message: m.ChatMessage) -> bool:
        """Keep a message in its place; False if it is here already."""
        if message.id in self.ids:
            return False
        self.ids.add(message.id)
        keys = [_sort_key(item) for item in self.messages]
        self.messages.insert(bisect.bisect_right(keys, _sort_key(message)), message)
        return True


class ChatModel:
    """The chat's state for the user ``me``."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.conversations: dict[str, Conversation] = {}
        self.incoming: list[str] = []
        """Who invited me (pending)."""
        self.outgoing: list[str] = []
        """Whom I invited (pending)."""
        self.current: str | None = None
        self.following = True
        """Whether the open conversation's pane is at its newest message (new
        messages then count as read, and the pane follows them)."""
        self._seen: set[bytes] = set()

    # --- the sidebar's order -------------------------------------------------------------

    def order(self) -> list[str]:
        """The conversations as the sidebar lists them: friends (and others opened),
        then rooms, each alphabetical."""
        return sorted(self.conversations, key=lambda name: (is_room(name), name))

    def nth(self, index: int) -> str | None:
        """The conversation at ``index`` (from 0) of :meth:`order`, or None."""
        names = self.order()
        return names[index] if 0 <= index < len(names) else None

    def step(self, delta: int) -> str | None:
        """The conversation ``delta`` places from the open one (wrapping)."""
        names = self.order()
        if not names:
            return None
        if self.current not in names:
            return names[0]
        return names[(names.index(self.current) + delta) % len(names)]

    def next_unread(self) -> str | None:
        """The next conversation after the open one with unread messages."""
        names = self.order()
        start = names.index(self.current) + 1 if self.current in names else 0
        for name in names[start:] + names[:start]:
            if self.conversations[name].unread and name != self.current:
                return name
        return None

    def matching(self, text: str) -> list[str]:
        """Conversations whose name contains ``text`` (Ctrl+K), best first."""
        needle = text.lower().lstrip("#")
        names = [name for name in self.order() if needle in name.lstrip("#")]
        return sorted(names, key=lambda name: not name.lstrip("#").startswith(needle))

    # --- what the server says --------------------------------------------------------------

    def conversation(self, name: str) -> Conversation:
        """The conversation ``name``, created if new."""
        found = self.conversations.get(name)
        if found is None:
            found = self.conversations[name] = Conversation(name)
        return found

    def set_friends(self, friends: Iterable[tuple[str, bool]]) -> None:
        """The friends list (name, online); former friends stay while they have
        messages here."""
        names = dict(friends)
        for name, conversation in list(self.conversations.items()):
            if not conversation.is_room and name not in names:
                conversation.friend = conversation.online = False
                if not conversation.messages and name != self.current:
                    del self.conversations[name]
        for name, online in names.items():
            conversation = self.conversation(name)
            conversation.friend, conversation.online = True, online

    def set_rooms(self, rooms: Iterable[str]) -> None:
        """The rooms I am in (others I left go from the sidebar)."""
        wanted = set(rooms)
        for name in [n for n in self.conversations if is_room(n) and n not in wanted]:
            self.remove(name)
        for name in wanted:
            self.conversation(name)

    def remove(self, name: str) -> None:
        self.conversations.pop(name, None)
        if self.current == name:
            self.current = None

    def set_presence(self, user: str, online: bool) -> None:
        conversation = self.conversations.get(user)
        if conversation is not None:
            conversation.online = online

    def set_invitations(self, incoming: Iterable[str], outgoing: Iterable[str]) -> None:
        self.incoming, self.outgoing = sorted(incoming), sorted(outgoing)

    def key_of(self, message: m.ChatMessage) -> str:
        """The conversation a message belongs to."""
        if is_room(message.to):
            return message.to
        return message.to if message.sender == self.me else message.sender

    def knows(self, message: m.ChatMessage) -> bool:
        """Whether the message is here already (a repeat)."""
        conversation = self.conversations.get(self.key_of(message))
        return conversation is not None and message.id in conversation.ids

    def receive(self, message: m.ChatMessage) -> bool:
        """A delivered message. True if it is new and unread (it raises its
        conversation's count: ring the bell); False if it is shown at once or a
        repeat."""
        conversation = self.conversation(self.key_of(message))
        if not conversation.add(message):
            return False
        visible = conversation.name == self.current and self.following
        if visible or message.sender == self.me:
            self._seen.add(message.id)
            return False
        conversation.unread += 1
        if conversation.marker is None:
            conversation.marker = message.id
        return True

    def add_history(self, name: str, messages: Iterable[m.ChatMessage]) -> None:
        """Older messages of a conversation (from ``/history`` or scrolling up):
        read already, as far as this screen is concerned."""
        conversation = self.conversation(name)
        for message in messages:
            if conversation.add(message):
                self._seen.add(message.id)

    # --- what the person does ----------------------------------------------------------------

    def open(self, name: str) -> Conversation:
        """Make ``name`` the open conversation: its unread ones are read now (the
        marker stays above them until another conversation is opened)."""
        if self.current is not None and self.current != name:
            previous = self.conversations.get(self.current)
            if previous is not None:
                previous.marker = None
        conversation = self.conversation(name)
        self.current = name
        self.following = True
        conversation.unread = 0
        self._seen.update(conversation.ids)
        return conversation

    def scrolled(self, at_bottom: bool) -> None:
        """The pane moved: at its bottom, what arrived meanwhile counts as read."""
        self.following = at_bottom
        if at_bottom and self.current in self.conversations:
            conversation = self.conversations[self.current]
            conversation.unread = 0
            self._seen.update(conversation.ids)

    def take_seen(self) -> set[bytes]:
        """Ids of messages shown since the last call (for the profile's bookkeeping)."""
        seen, self._seen = self._seen, set()
        return seen
