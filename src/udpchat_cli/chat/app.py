"""``udpchat-cli chat``: the full-screen chat, on Textual.

The screen draws a :class:`~udpchat_cli.chat.model.ChatModel`, reads lines through
:func:`~udpchat_cli.chat.commands.parse`, and talks to the server through a
:class:`~udpchat_cli.chat.link.ChatLink` (``udpchat_proto.asyncio``'s client) on
Textual's own asyncio loop. What arrives is saved in the profile before it is
acknowledged (a crash loses nothing) and counts as shown once it is on the screen (a
later ``inbox`` does not show it again).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import attrs
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Static, TextArea

from udpchat_proto import Address, ValidationError
from udpchat_proto import messages as m
from udpchat_proto.asyncio import ClientPush, CryptoStore
from udpchat_proto.chat import MessageDropped, check_text, fingerprint_of

from ..device import ProfileCryptoStore
from ..output import event_text, visible, visible_lines
from ..profiles import Home
from .commands import HELP, Command, CommandError, parse
from .link import ChatLink, LinkState
from .model import ChatModel, Conversation

__all__ = ["CONTINUATION_MARK", "PASTE_LINES_ASK", "ChatApp", "ProfileBook", "render_message"]

PASTE_LINES_ASK = 2
"""A paste of this many lines or more asks before it is sent."""
HISTORY_FIRST = 50
"""Messages of history loaded when a conversation is first opened."""
HISTORY_PAGE = 50
"""Messages of older history loaded each time the pane reaches its top."""


class ProfileBook:
    """What the chat needs of the profile: keep what arrives, mark what is shown.

    Args:
        record: saves received messages as not shown yet (before they are
            acknowledged).
        mark_shown: marks ids as shown.
        unshown: the messages received earlier and not shown yet.
        delivered: ids already received.
        crypto_store: the device's end-to-end encryption state (the profile's,
            under the lock its scripts share); None keeps it in memory.
    """

    def __init__(
        self,
        *,
        record: Callable[[list[m.ChatMessage]], None],
        mark_shown: Callable[[set[bytes]], None],
        unshown: list[m.ChatMessage],
        delivered: frozenset[bytes],
        crypto_store: CryptoStore | None = None,
    ) -> None:
        self.crypto_store = crypto_store
        self.record = record
        self.mark_shown = mark_shown
        self.unshown = unshown
        self.delivered = delivered


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%H:%M")


CONTINUATION_MARK = "|"
"""In the gutter of each further line of a message's text."""


def render_message(message: m.ChatMessage) -> Table:
    """A message as drawn: ``12:00 alice: hi``, in plain text, never markup (a
    ``[b]`` in it is shown as typed), never a control, bidi or separator character
    (see ``output.visible``).

    The header ("time sender:") has a column of its own, and the text wraps in
    the next one: no line of the text, whether it follows a newline or is wrapped
    to the pane's width, starts where a header does, so none can pass for another
    sender's message. A line after a newline has :data:`CONTINUATION_MARK` in the
    header's column.
    """
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")  # (a word longer than the pane is cut, not lost)
    first, *more = visible_lines(message.text)
    header = Text.assemble((_time(message.sent_at), "dim"), " ", (message.sender, "bold"), ":")
    grid.add_row(header, Text(first))
    for line in more:
        grid.add_row(Text(CONTINUATION_MARK, style="dim", justify="right"), Text(line))
    return grid


def _plain(text: str) -> Text:
    return Text(visible(text))


@attrs.frozen
class Note:
    """A transient line of a conversation (an answer, a refusal, the help)."""

    at: datetime.datetime
    text: str


OPTION_DIGITS = [f"\x1b{digit}" for digit in "123456789"]
"""ESC + digit: what terminals send for Alt+1..9 (Textual maps them to the
characters macOS's Option key types, which a chat's Alt+N must not be)."""


def _alt_digits_as_keys() -> None:
    """Let ESC + digit arrive as ``alt+1``..``alt+9`` (see OPTION_DIGITS)."""
    with contextlib.suppress(ImportError, AttributeError):
        from textual import _ansi_sequences  # noqa: PLC0415 (private: guarded)

        table = cast(dict[str, object], _ansi_sequences.ANSI_SEQUENCES_KEYS)
        for sequence in OPTION_DIGITS:
            table.pop(sequence, None)


@attrs.frozen(eq=False)
class _Placement:
    """Where a redraw puts the reader once a refresh has laid its lines out: as far
    from the bottom as they were (``from_bottom``), with ``marker`` at the top, or
    (neither) at the newest line if they follow."""

    from_bottom: float | None = None
    marker: Static | None = None

    @property
    def follows(self) -> bool:
        return self.from_bottom is None and self.marker is None


class MessagePane(VerticalScroll):
    """The open conversation's messages: follows new ones only while at its bottom.

    A redraw decides where the reader goes and goes there after a refresh. The
    reader's own scrolls in between (keys, the wheel, the scrollbar) wait for it and
    are made after it, from where it put them: a Page Up pressed as older lines load
    above goes a page up from the line being read, never undone by the placement."""

    class Moved(Message):
        """The pane scrolled (by the person or to follow)."""

        def __init__(self, at_bottom: bool, at_top: bool) -> None:
            self.at_bottom = at_bottom
            self.at_top = at_top
            super().__init__()

    following = True
    """Whether the reader is at the newest line (new lines then scroll into view).
    Changed only by scrolling: content growing below does not change it."""

    _placing: _Placement | None = None
    """The last redraw's placement while a refresh has not let it run."""
    _held: tuple[Callable[[], object], ...] = ()
    """The reader's scrolls meanwhile, made once it has run."""
    _now = False
    """Inside a placement, a follow or a scroll being made: scroll at once."""

    @property
    def at_bottom(self) -> bool:
        return self.scroll_y >= self.max_scroll_y - 0.5

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Before a placement, the pane only moves as a redraw's lines come and go
        # (scroll_y clamped to them): not the reader, and not where they will be.
        if round(old_value) != round(new_value) and self._placing is None:
            self._moved()

    def _moved(self) -> None:
        self.following = self.at_bottom
        self.post_message(self.Moved(self.following, self.scroll_y <= 0 < self.max_scroll_y))

    def show(
        self, conversation: Conversation | None, notes: list[Note], *, stay: bool = False
    ) -> None:
        """Draw a conversation from scratch: at the "new messages" marker if it has
        one, else at its newest message; with ``stay``, where the reader was,
        unless they were at the newest (older messages loaded above do not move
        what they read). Notes take their place in time among the messages."""
        placing = self._placing
        if placing is not None and placing.from_bottom is not None:
            from_bottom = placing.from_bottom  # (not restored yet: where the reader is)
        else:
            from_bottom = self.max_scroll_y - self.scroll_y
        jumping = placing is not None and placing.marker is not None
        keep = stay and not self.following
        if not keep:
            self.following = True
        self.remove_children()
        timeline: list[tuple[datetime.datetime, int, Static]] = []
        marker: Static | None = None
        if conversation is not None:
            for order, message in enumerate(conversation.messages):
                if message.id == conversation.marker:
                    marker = Static("── new messages ──", classes="marker")
                    timeline.append((message.sent_at, 2 * order, marker))
                line = Static(render_message(message), classes="message")
                timeline.append((message.sent_at, 2 * order + 1, line))
        count = len(timeline)
        timeline += [
            (note.at, 2 * count + n, Static(_plain(note.text), classes="note"))
            for n, note in enumerate(notes)
        ]
        timeline.sort(key=lambda item: (item[0], item[1]))
        self.mount_all([widget for _at, _order, widget in timeline])
        if keep:
            placement = _Placement(from_bottom=from_bottom)
        elif marker is not None and (not stay or jumping):
            placement = _Placement(marker=marker)
        else:
            placement = _Placement()
        self._placing = placement
        self.call_after_refresh(self._place, placement)

    def _place(self, placement: _Placement) -> None:
        """Make a redraw's placement (unless a later redraw decided another), then
        the reader's scrolls held meanwhile, from there."""
        if self._placing is not placement:
            return
        self._placing = None
        y = self.scroll_y
        held, self._held = self._held, ()
        with self._at_once():
            if placement.marker is not None:
                self.scroll_to_widget(placement.marker, top=True, animate=False)
            elif placement.from_bottom is not None:
                self.scroll_to(y=max(0.0, self.max_scroll_y - placement.from_bottom), animate=False)
            else:
                # At the bottom now, so that a scroll held meanwhile starts there;
                # the follow puts them at the newest line again once every new
                # line's height is known (unless that scroll moved them away).
                self.scroll_end(animate=False)
                self._follow()
            if not placement.follows and round(y) == round(self.scroll_y):
                self._moved()  # (else said as it moved)
            for scroll in held:
                scroll()

    def add(self, widget: Static) -> None:
        """Append a line; follow it only if the pane was at its bottom."""
        self.mount(widget)
        if self.following:
            self.call_after_refresh(self._follow)

    def _follow(self, *, laid_out: bool = False) -> None:
        """Scroll to the newest line two refreshes after it was mounted (only then
        is its height in ``max_scroll_y``), unless the reader scrolled away
        meanwhile, or a redraw placed them since: asked again at each step, so that
        a page up pressed while a burst of lines settles is not undone by a scroll
        decided before it."""
        if not self.following or self._placing is not None:
            return
        if laid_out:
            with self._at_once():
                self.scroll_end(animate=False)
        else:
            self.call_after_refresh(self._follow, laid_out=True)

    # --- the reader's scrolls: held while a placement waits ------------------------------

    # Textual's scroll helpers (page up and down, to a widget, the scrollbar's
    # messages) all come through these methods; the wheel goes around them, hence
    # the wheel's handlers below.

    def _reader(self, scroll: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        call = functools.partial(scroll, *args, **kwargs)
        if self._placing is not None:
            self._held += (call,)
        elif self._now:
            call()
        else:
            # A refresh later, as Textual scrolls (lines added meanwhile are laid
            # out by then: a page down reaches them), unless a redraw decided a
            # placement meanwhile: then after it.
            self.call_after_refresh(self._run, call)

    def _run(self, call: Callable[[], object]) -> None:
        if self._placing is not None:
            self._held += (call,)
        else:
            with self._at_once():
                call()

    @contextlib.contextmanager
    def _at_once(self) -> Iterator[None]:
        now, self._now = self._now, True
        try:
            yield
        finally:
            self._now = now

    def scroll_to(self, x: float | None = None, y: float | None = None, **kwargs: Any) -> None:
        """Scroll when :meth:`_reader` says, which has waited for the refresh
        Textual would wait for: its target is reckoned then, not before."""
        kwargs["immediate"] = True
        self._reader(super().scroll_to, x, y, **kwargs)

    def scroll_relative(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_relative, *args, **kwargs)

    def scroll_up(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_up, *args, **kwargs)

    def scroll_down(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_down, *args, **kwargs)

    def scroll_page_up(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_page_up, *args, **kwargs)

    def scroll_page_down(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_page_down, *args, **kwargs)

    def scroll_home(self, *args: Any, **kwargs: Any) -> None:
        self._reader(super().scroll_home, *args, **kwargs)

    def scroll_end(self, *args: Any, **kwargs: Any) -> None:
        """To the newest line, following from now (Textual scrolls there only after
        a refresh: a redraw meanwhile follows too, not keeping the place left)."""

        def end() -> None:
            self.following = True
            super(MessagePane, self).scroll_end(*args, **{**kwargs, "immediate": True})

        self._reader(end)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._wheel(event, -1)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self._wheel(event, 1)

    def _wheel(self, event: events.MouseScrollUp | events.MouseScrollDown, rows: int) -> None:
        # (Textual's own handler scrolls at once, unless prevented here.)
        if self._placing is None or event.ctrl or event.shift:
            return
        event.prevent_default()
        event.stop()
        self._reader(self.scroll_relative, y=rows * self.app.scroll_sensitivity_y, animate=False)


class Composer(TextArea):
    """The input: Enter sends, Alt+Enter starts a new line, a paste of several lines
    asks first."""

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            self.text = text
            super().__init__()

    class Pasted(Message):
        def __init__(self, text: str) -> None:
            self.text = text
            super().__init__()

    async def _on_key(self, event: events.Key) -> None:
        # (Textual then runs TextArea's own handler, unless prevented here.)
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
        elif event.key in ("alt+enter", "ctrl+j"):
            # Most terminals send Alt+Enter as a plain Enter: Ctrl+J works in all.
            event.stop()
            event.prevent_default()
            self.insert("\n")

    async def _on_paste(self, event: events.Paste) -> None:
        # Terminals send a pasted line break as a carriage return.
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        if text.count("\n") + 1 >= PASTE_LINES_ASK:
            event.stop()
            event.prevent_default()
            self.post_message(self.Pasted(text))
        # (else TextArea's own handler inserts it)


class ConfirmPaste(ModalScreen[bool]):
    """Send a pasted text of several lines? (y / n)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Send"),
        Binding("n,escape", "answer(False)", "Keep editing"),
    ]

    def __init__(self, lines: int, to: str) -> None:
        super().__init__()
        self._question = f"Send these {lines} lines to {to} as one message? (y / n)"

    def compose(self) -> ComposeResult:
        yield Static(self._question, id="question")

    def action_answer(self, send: bool) -> None:
        self.dismiss(send)


class JumpTo(ModalScreen[str | None]):
    """Ctrl+K: type part of a conversation's name, Enter opens the best match."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, model: ChatModel) -> None:
        super().__init__()
        self._model = model

    def compose(self) -> ComposeResult:
        with Vertical(id="jump"):
            yield Static("Jump to:")
            yield Input(placeholder="a friend or #room", id="jump-input")
            yield Static("", id="jump-matches")

    def on_input_changed(self, event: Input.Changed) -> None:
        matches = self._model.matching(event.value)[:8]
        self.query_one("#jump-matches", Static).update("\n".join(matches) or "(no match)")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        matches = self._model.matching(event.value)
        self.dismiss(matches[0] if matches else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChatApp(App[int]):
    """The chat of one logged-in user.

    Args:
        username: who is logged in.
        server_name: ``HOST:PORT`` as the profile names it (shown).
        servers: its resolved address (or its nodes', tried in turn).
        server_key: its pinned key.
        token: the login session.
        book: the profile's bookkeeping.
    """

    TITLE = "udpchat"
    CSS = """
    #sidebar { width: 28; border-right: solid $primary; padding: 0 1; }
    #title { height: 1; background: $boost; padding: 0 1; text-style: bold; }
    #who { color: $text-muted; height: auto; margin-bottom: 1; }
    #conversations { height: auto; }
    #invitations { height: auto; margin-top: 1; }
    #pane { height: 1fr; padding: 0 1; }
    .marker { color: $warning; text-align: center; }
    .note { color: $text-muted; }
    #body { height: 1fr; }
    #composer { height: 4; border: none; border-top: solid $primary; padding: 0 1; }
    #status { dock: bottom; height: 1; background: $primary-background; padding: 0 1; }
    ConfirmPaste, JumpTo { align: center middle; }
    #question, #jump {
        width: 60; height: auto; border: solid $accent; padding: 1; background: $surface;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit_chat", "Quit", priority=True),
        Binding("ctrl+k", "jump", "Jump", priority=True),
        Binding("ctrl+n", "step(1)", "Next", priority=True),
        Binding("ctrl+p", "step(-1)", "Previous", priority=True),
        Binding("alt+a", "next_unread", "Unread", priority=True),
        Binding("pageup", "page(-1)", "Page up", priority=True),
        Binding("pagedown", "page(1)", "Page down", priority=True),
        Binding("end", "newest", "Newest", priority=True),
        *(Binding(f"alt+{n}", f"nth({n})", show=False, priority=True) for n in range(1, 10)),
    ]

    @classmethod
    def for_profile(
        cls,
        home: Home,
        profile_name: str,
        server_name: str,
        servers: list[Address],
        server_key: bytes,
    ) -> ChatApp:
        """The chat of a logged-in profile, keeping its bookkeeping in the profile.

        Raises:
            ValueError: the profile is not logged in.
        """
        profile = home.load(profile_name)
        if profile.token is None or profile.username is None:
            raise ValueError(f"profile {profile_name} is not logged in")

        def record(messages: list[m.ChatMessage]) -> None:
            home.update(profile_name, lambda saved: saved.record(messages, shown=False))

        def mark_shown(ids: set[bytes]) -> None:
            home.update(profile_name, lambda saved: saved.mark_shown(ids))

        book = ProfileBook(
            record=record,
            mark_shown=mark_shown,
            unshown=list(profile.unshown),
            delivered=frozenset(profile.delivered),
            crypto_store=ProfileCryptoStore(home, profile_name),
        )
        return cls(
            username=profile.username,
            server_name=server_name,
            servers=servers,
            server_key=server_key,
            token=profile.token,
            book=book,
        )

    def __init__(
        self,
        *,
        username: str,
        server_name: str,
        servers: list[Address],
        server_key: bytes,
        token: bytes,
        book: ProfileBook,
    ) -> None:
        super().__init__()
        self.model = ChatModel(username)
        self._server_name = server_name
        self._servers = servers
        self._server_key = server_key
        self._token = token
        self._book = book
        self._link: ChatLink | None = None
        self._notes: dict[str | None, list[Note]] = {}
        """Transient lines (answers, refusals, help) per conversation."""
        self._history_asked: dict[str, int] = {}
        self._older_asked: dict[str, bytes] = {}
        """The oldest message each conversation's last page was asked before."""
        self.link_state = LinkState.CONNECTING
        self._quit_armed = False
        _alt_digits_as_keys()

    # --- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static(_plain(f"{self.model.me} @ {self._server_name}"), id="who")
                yield Static("", id="conversations")
                yield Static("", id="invitations")
            with Vertical(id="main"):
                yield Static("", id="title")
                yield MessagePane(id="pane")
                yield Composer(
                    id="composer",
                    show_line_numbers=False,
                    soft_wrap=True,
                    placeholder="Type a message (Enter sends, Ctrl+J new line) or /help",
                )
        yield Static("connecting…", id="status")

    async def on_mount(self) -> None:
        for message in self._book.unshown:
            self.model.receive(message)
        self._redraw()
        self.query_one(Composer).focus()
        self._link = ChatLink(
            servers=self._servers,
            server_key=self._server_key,
            token=self._token,
            on_pushes=self._on_pushes,
            on_state=self._on_link_state,
            delivered_ids=self._book.delivered,
            crypto_store=self._book.crypto_store,
        )
        self._link.start()

    def on_unmount(self) -> None:
        if self._link is not None:
            self._link.close()

    # --- drawing ---------------------------------------------------------------------------

    def _redraw(self, *, stay: bool = False) -> None:
        """The sidebar, and the pane from scratch (see MessagePane.show)."""
        self._draw_sidebar()
        current = self.model.current
        conversation = self.model.conversations.get(current) if current else None
        notes = self._notes.get(current, [])
        self.query_one(MessagePane).show(conversation, notes, stay=stay)
        self._seen()

    def _draw_sidebar(self) -> None:
        sidebar = Text()
        for index, name in enumerate(self.model.order(), start=1):
            conversation = self.model.conversations[name]
            mark = "#" if conversation.is_room else ("●" if conversation.online else "○")
            unread = f" ({conversation.unread})" if conversation.unread else ""
            label = f"{index if index < 10 else ' '} {mark} {name.lstrip('#')}{unread}"
            style = "reverse" if name == self.model.current else "bold" if unread else ""
            if sidebar:
                sidebar.append("\n")
            sidebar.append(label, style=style)
        self.query_one("#conversations", Static).update(sidebar or "no conversations yet")
        invitations = [f"  {name} (/accept {name})" for name in self.model.incoming]
        invitations += [f"  → {name} (waiting)" for name in self.model.outgoing]
        text = "Invitations:\n" + "\n".join(invitations) if invitations else ""
        self.query_one("#invitations", Static).update(Text(text))
        current = self.model.conversations.get(self.model.current or "")
        title = ""
        if current is not None:
            title = current.name
            if not current.is_room:
                title += " (online)" if current.online else " (offline)"
                if not current.friend:
                    title += ": not a friend"
        self.query_one("#title", Static).update(Text(title))

    def _note(self, text: str, conversation: str | None = None) -> None:
        """A transient line in a conversation (the open one by default)."""
        where = conversation if conversation is not None else self.model.current
        note = Note(datetime.datetime.now(datetime.UTC), text)
        self._notes.setdefault(where, []).append(note)
        if where == self.model.current:
            self.query_one(MessagePane).add(Static(_plain(text), classes="note"))

    def _seen(self) -> None:
        seen = self.model.take_seen()
        if seen:
            self._book.mark_shown(seen)

    def _set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(_plain(text))

    # --- the link's news -------------------------------------------------------------------

    def _on_link_state(self, state: LinkState, detail: str) -> None:
        self.link_state = state
        if state is LinkState.CONNECTED:
            self._set_status(f"connected to {self._server_name}")
            self._refresh_lists()
        elif state is LinkState.RECONNECTING:
            self._set_status(f"reconnecting: {detail}")
            for conversation in self.model.conversations.values():
                conversation.online = False  # (unknown until the lists come again)
            self._draw_sidebar()
        elif state is LinkState.ENDED and detail != "closed":
            self._set_status(f"disconnected: {detail}")
            self._note(f"disconnected: {detail}")

    def _on_pushes(self, pushes: list[ClientPush]) -> None:
        received = [p.message for p in pushes if isinstance(p, m.MessageDelivered)]
        if received:
            self._book.record(received)  # before the acknowledgements leave
        ring = False
        pane = self.query_one(MessagePane)
        for push in pushes:
            if isinstance(push, m.MessageDelivered):
                message = push.message
                known = self.model.knows(message)
                ring |= self.model.receive(message)
                if not known and self.model.key_of(message) == self.model.current:
                    pane.add(Static(render_message(message), classes="message"))
            elif isinstance(push, m.PresenceChanged):
                self.model.set_presence(push.username, push.online)
            elif isinstance(push, m.InvitationReceived):
                self._note(f"{push.from_user} invites you: /accept {push.from_user}")
                self._refresh_lists()
            elif isinstance(push, m.InvitationAnswered | m.InvitationCancelled | m.Unfriended):
                self._note(event_text(push))
                self._refresh_lists()
            elif isinstance(push, m.RoomMembershipChanged):
                verb = "joined" if push.joined else "left"
                self._note(f"{push.username} {verb} {push.room}", push.room)
            elif isinstance(push, m.DeviceAdded):
                # A ghost device the server made up would show here: the line says
                # how to check it.
                self._note(
                    f"{push.user} has a new device {push.device.device_id.hex()} "
                    f"(fingerprint {fingerprint_of(push)}): compare it with them, then "
                    f"udpchat-cli verify {push.user} {push.device.device_id.hex()} FINGERPRINT"
                )
            elif isinstance(push, MessageDropped):
                # Counted by the client; never shown raw, only said.
                self._note(f"a message from {push.sender} could not be read ({push.reason})")
        if ring:
            self.bell()
        self._draw_sidebar()
        self._seen()

    def _refresh_lists(self) -> None:
        link = self._link
        if link is None:
            return

        def friends(answer: m.Response | None) -> None:
            if isinstance(answer, m.Friends):
                self.model.set_friends((f.username, f.online) for f in answer.friends)
                self._after_lists()

        def rooms(answer: m.Response | None) -> None:
            if isinstance(answer, m.Rooms):
                self.model.set_rooms(room.room for room in answer.rooms)
                self._after_lists()

        def invitations(answer: m.Response | None) -> None:
            if isinstance(answer, m.Invitations):
                self.model.set_invitations(answer.incoming, answer.outgoing)
                self._draw_sidebar()

        link.request(lambda conn: conn.list_friends(), friends)
        link.request(lambda conn: conn.list_rooms(), rooms)
        link.request(lambda conn: conn.list_invitations(), invitations)

    def _after_lists(self) -> None:
        if self.model.current is None and self.model.order():
            self._open(self.model.order()[0])
        else:
            self._draw_sidebar()

    # --- conversations -------------------------------------------------------------------------

    def _open(self, name: str) -> None:
        self.model.open(name)
        self._redraw()
        if name not in self._history_asked:
            self._load_history(name, HISTORY_FIRST)

    def _load_history(self, name: str, count: int) -> None:
        if self._history_asked.get(name, 0) >= count or self._link is None:
            return
        self._history_asked[name] = count

        def loaded(answer: m.Response | None) -> None:
            if isinstance(answer, m.History):
                self.model.add_history(name, answer.messages)
                if name == self.model.current:
                    self._redraw(stay=True)
            elif isinstance(answer, m.ErrorResponse):
                self._history_asked.pop(name, None)
                conversation = self.model.conversations.get(name)
                if (
                    conversation is not None
                    and not conversation.friend
                    and not (conversation.messages or conversation.is_room)
                ):
                    # /msg of a name that is no one's: it does not stay in the list.
                    self.model.remove(name)
                    self._redraw()
                self._note(f"{name}: {answer.message}")
            else:
                self._history_asked.pop(name, None)

        if not self._link.history(name, count, loaded):
            self._history_asked.pop(name, None)

    def _load_older(self, name: str) -> None:
        """The page of history before the oldest message shown (scrolled to the top)."""
        conversation = self.model.conversations.get(name)
        if conversation is None or not conversation.messages or self._link is None:
            return
        oldest = conversation.messages[0].id
        if self._older_asked.get(name) == oldest:
            return  # asked already (or nothing older came back)
        self._older_asked[name] = oldest

        def loaded(answer: m.Response | None) -> None:
            if isinstance(answer, m.History):
                self.model.add_history(name, answer.messages)
                if answer.messages and name == self.model.current:
                    self._redraw(stay=True)
            else:
                self._older_asked.pop(name, None)

        if not self._link.history(name, HISTORY_PAGE, loaded, before=oldest):
            self._older_asked.pop(name, None)

    def on_message_pane_moved(self, event: MessagePane.Moved) -> None:
        self.model.scrolled(event.at_bottom)
        if event.at_bottom:
            self._draw_sidebar()
            self._seen()
        if event.at_top and self.model.current is not None:
            self._load_older(self.model.current)

    # --- input ---------------------------------------------------------------------------------

    def on_composer_submitted(self, event: Composer.Submitted) -> None:
        composer = self.query_one(Composer)
        try:
            command = parse(event.text)
        except CommandError as exc:
            self._note(str(exc))
            composer.clear()  # (as other chats do: a mistyped command goes)
            return
        if command is None:
            composer.clear()
            return
        if self._run(command):
            composer.clear()

    def on_composer_pasted(self, event: Composer.Pasted) -> None:
        composer = self.query_one(Composer)
        to = self.model.current
        if to is None:
            composer.insert(event.text)
            return

        def answered(send: bool | None) -> None:
            if not send or not self._say(event.text):
                composer.insert(event.text)  # kept for editing (a refusal says why)

        self.push_screen(ConfirmPaste(event.text.count("\n") + 1, to), answered)

    def _run(self, command: Command) -> bool:
        """Carry out a command; False if the input should stay (not sent)."""
        match command.name:
            case "say":
                assert command.text is not None
                return self._say(command.text)
            case "help":
                for line in HELP.splitlines():
                    self._note(line)
            case "quit":
                self.action_quit_chat()
            case "msg":
                assert command.target is not None
                self._open(command.target)
                if command.text:
                    return self._say(command.text)
            case "join":
                self._ask(command, lambda conn: conn.join_room(command.target or ""))
            case "leave":
                room = command.target or self.model.current
                if room is None or not room.startswith("#"):
                    self._note("usage: /leave ROOM (the open conversation is not a room)")
                    return False
                self._ask(Command("leave", target=room), lambda conn: conn.leave_room(room))
            case "history":
                if self.model.current is None:
                    self._note("no open conversation")
                    return False
                self._history_asked.pop(self.model.current, None)
                self._load_history(self.model.current, command.count or HISTORY_FIRST)
            case _:
                target = command.target or ""
                issue = {
                    "invite": lambda conn: conn.invite(target),
                    "accept": lambda conn: conn.accept_invitation(target),
                    "decline": lambda conn: conn.decline_invitation(target),
                    "cancel": lambda conn: conn.cancel_invitation(target),
                    "unfriend": lambda conn: conn.unfriend(target),
                }[command.name]
                self._ask(command, issue)
        return True

    def _ask(self, command: Command, issue: Callable[[Any], int]) -> None:
        """Send a request; show its outcome, refresh what it changed."""
        if self._link is None or not self._link.request(
            issue, lambda answer: self._answered(command, answer)
        ):
            self._note(f"/{command.name}: not connected; try again once connected")

    def _answered(self, command: Command, answer: m.Response | None) -> None:
        target = command.target or ""
        if answer is None:
            self._note(f"/{command.name} {target}: the connection was lost; try again")
            return
        if isinstance(answer, m.ErrorResponse):
            self._note(f"/{command.name} {target}: {answer.message} ({answer.code})")
            return
        done = {
            "join": f"joined {target}",
            "leave": f"left {target}",
            "invite": f"invited {target}",
            "accept": f"you and {target} are now friends",
            "decline": f"declined {target}'s invitation",
            "cancel": f"cancelled the invitation to {target}",
            "unfriend": f"you and {target} are no longer friends",
        }[command.name]
        if command.name == "join":
            self.model.conversation(target)
            self._open(target)
        elif command.name == "leave":
            self.model.remove(target)
            self._redraw()
        self._note(done)
        self._refresh_lists()

    def _say(self, text: str) -> bool:
        to = self.model.current
        if to is None:
            self._note("no open conversation: /msg USER, or /join ROOM")
            return False
        try:
            check_text(text)
        except ValidationError as exc:
            self._note(f"not sent: {exc}")
            return False
        if self._link is None or self._link.state is LinkState.ENDED:
            self._note("not sent: disconnected")
            return False

        def answered(answer: m.Response | None) -> None:
            if isinstance(answer, m.MessageAccepted):
                message = m.ChatMessage(
                    id=answer.message_id,
                    sender=self.model.me,
                    to=to,
                    text=text,
                    sent_at=answer.sent_at,
                )
                # A page of history asked meanwhile may have brought it first (this
                # answer lost with a connection, the message sent again after the
                # reconnect): it is drawn already then.
                known = self.model.knows(message)
                self.model.receive(message)
                if not known and to == self.model.current:
                    self.query_one(MessagePane).add(
                        Static(render_message(message), classes="message")
                    )
            elif isinstance(answer, m.ErrorResponse):
                self._note(f"not sent to {to}: {answer.message} ({answer.code})", to)
                composer = self.query_one(Composer)
                if not composer.text:
                    composer.insert(text)  # not lost: there to edit or send again

        self._link.send_message(to, text, answered)
        if self._link.state is not LinkState.CONNECTED:
            self._note("queued: it will be sent when the connection is back")
        return True

    # --- keys ------------------------------------------------------------------------------------

    def action_quit_chat(self) -> None:
        unsent = self._link.unsent if self._link is not None else 0
        if unsent and not self._quit_armed:
            self._quit_armed = True
            self._note(
                f"{unsent} message(s) not sent yet: they leave once the connection is "
                "back. Quit again to drop them."
            )
            return
        self.exit(0)

    def action_step(self, delta: int) -> None:
        name = self.model.step(delta)
        if name is not None:
            self._open(name)

    def action_nth(self, n: int) -> None:
        name = self.model.nth(n - 1)
        if name is not None:
            self._open(name)

    def action_next_unread(self) -> None:
        name = self.model.next_unread()
        if name is not None:
            self._open(name)

    def action_page(self, direction: int) -> None:
        pane = self.query_one(MessagePane)
        if direction < 0:
            pane.scroll_page_up(animate=False)
        else:
            pane.scroll_page_down(animate=False)

    def action_newest(self) -> None:
        self.query_one(MessagePane).scroll_end(animate=False)

    def action_jump(self) -> None:
        def chosen(name: str | None) -> None:
            if name is not None:
                self._open(name)

        self.push_screen(JumpTo(self.model), chosen)
