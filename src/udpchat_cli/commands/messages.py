"""Messages: ``send``, ``status``, ``inbox``, ``listen`` and ``history``."""

from __future__ import annotations

import contextlib
import math
import time

import click

from udpchat_proto import messages as m
from udpchat_proto.chat import (
    check_history_limit,
    check_message_id,
    check_text,
    valid_target,
)

from .. import output
from ..app import (
    EXIT_TIMEOUT,
    EXIT_USAGE,
    App,
    CliError,
    Seconds,
    current_app,
    hex_bytes,
    json_option,
    not_logged_in,
)
from ..profiles import Profile
from ..session import ConnectionLostError, ServerTimeoutError, Session

__all__ = ["COMMANDS", "DEFAULT_DELIVERY_WAIT"]

DEFAULT_DELIVERY_WAIT = 60.0
"""Seconds ``send --wait delivered`` waits unless ``--for`` says otherwise."""
_STATUS_POLL_INTERVAL = 5.0
"""While waiting for a receipt, how often the status is asked as well."""


@click.command()
@click.argument("to", metavar="TO")
@click.argument("text")
@click.option(
    "--wait",
    type=click.Choice(["delivered"]),
    default=None,
    help="Wait until a device of the friend TO has received it (exit 3 if not in time).",
)
@click.option(
    "--for",
    "wait_for",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help=f"How long --wait delivered waits [default: {DEFAULT_DELIVERY_WAIT:g}].",
)
@json_option
def send(to: str, text: str, wait: str | None, wait_for: float | None) -> None:
    """Send TEXT to the friend TO, or to the room TO when it starts with '#'."""
    app = current_app()
    if wait_for is not None and wait is None:
        raise click.UsageError("--for goes with --wait delivered")
    target = valid_target(to)
    check_text(text)
    if wait is not None and target.startswith("#"):
        raise CliError(
            EXIT_USAGE, "usage", "--wait delivered is for direct messages: rooms have no receipts"
        )
    if wait is None:
        with app.connect(resume=True) as (session, _server):
            accepted = app.send(session, target, text)
        app.out.result(
            f"sent to {target} (id {accepted.message_id.hex()})",
            {"ok": True, "id": accepted.message_id.hex(), "to": target},
        )
        return
    _send_and_wait(app, target, text, DEFAULT_DELIVERY_WAIT if wait_for is None else wait_for)


def _send_and_wait(app: App, target: str, text: str, wait_for: float) -> None:
    """``send --wait delivered``: send, then wait for the receipt on the same
    connection (asking the status now and then, should a push be missed)."""
    receipts: set[bytes] = set()

    def keep(pushes: list[m.Push]) -> None:
        app.keep_messages(pushes)
        for push in pushes:
            if isinstance(push, m.DeliveryReceipts):
                receipts.update(receipt.message_id for receipt in push.receipts)

    with app.connect(resume=True, on_pushes=keep) as (session, _server):
        message_id = app.send(session, target, text).message_id
        # The message is stored: from here on, whatever happens, its id is printed.
        deadline = time.monotonic() + wait_for
        why = f"not delivered within {wait_for:g} s; it is stored and will be delivered"
        delivered = False
        try:
            while True:
                status = session.request(lambda conn: conn.message_status(message_id))
                if isinstance(status, m.ErrorResponse):  # gone: its recipient was deleted
                    why = f"not delivered: {status.message}"
                    break
                delivered = (
                    isinstance(status, m.MessageStatus) and status.delivered_at is not None
                ) or message_id in receipts
                now = time.monotonic()
                if delivered or now >= deadline:
                    break
                session.run_until(
                    lambda: message_id in receipts, min(deadline, now + _STATUS_POLL_INTERVAL)
                )
        except (ServerTimeoutError, ConnectionLostError) as exc:
            why = (
                f"not known to be delivered ({exc}); it is stored: see 'status {message_id.hex()}'"
            )
    result = {"ok": True, "id": message_id.hex(), "to": target, "delivered": delivered}
    if delivered:
        app.out.result(f"delivered to {target} (id {message_id.hex()})", result)
        return
    app.out.result(f"sent to {target} (id {message_id.hex()}), not delivered yet", result)
    app.out.error_line(why)  # (it may carry the server's words)
    raise click.exceptions.Exit(EXIT_TIMEOUT)


@click.command()
@click.argument("message", metavar="MESSAGE_ID")
@json_option
def status(message: str) -> None:
    """Whether a direct message you sent (its id from 'send') was delivered."""
    app = current_app()
    message_id = hex_bytes(message)
    check_message_id(message_id)
    answer = app.call(lambda conn: conn.message_status(message_id), m.MessageStatus)
    app.out.result(*output.status_result(answer))


@click.command()
@click.option(
    "--wait",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait up to this long for at least one message.",
)
@json_option
def inbox(wait: float | None) -> None:
    """Print the messages not shown yet, oldest first (each exactly once)."""
    app = current_app()
    arrived = 0

    def keep(pushes: list[m.Push]) -> None:
        nonlocal arrived
        app.keep_messages(pushes)
        arrived += sum(isinstance(push, m.MessageDelivered) for push in pushes)

    with app.connect(resume=True, on_pushes=keep) as (session, _server):
        _drain_backlog(session)
        if wait and not app.profile().unshown:
            session.run_until(lambda: arrived > 0, time.monotonic() + wait)
        shown = app.profile().unshown
        app.out.result(*output.messages_result(shown, empty="no new messages"))
        ids = {message.id for message in shown}
        app.update(lambda profile: profile.mark_shown(ids))


def _drain_backlog(session: Session) -> None:
    """Receive every message the server holds for this login session: the server
    pushes its backlog in windows, then ``caught_up`` (after every delivery it
    marks the end of, since the connection delivers in order).

    Raises:
        ServerTimeoutError: no ``caught_up`` within ``--timeout`` of the last push.
    """
    conn = session.connection
    progress = -1
    while not conn.caught_up:
        seen = conn.stats.deliveries
        if seen == progress:  # a whole timeout with no push: give up
            raise ServerTimeoutError(
                f"no answer from {session.server} within {session.timeout:g} s"
            )
        progress = seen
        session.run_until(lambda: conn.caught_up, time.monotonic() + session.timeout)


@click.command()
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option(
    "--for",
    "duration",
    type=Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help="Stop after this long.",
)
@json_option
def listen(count: int | None, duration: float | None) -> None:
    """Stay online and print every event as it comes (pending messages first)."""
    # Ctrl-C ends listen successfully, whenever it comes (connecting included).
    with contextlib.suppress(KeyboardInterrupt):
        _listen(count, duration)


def _listen(count: int | None, duration: float | None) -> None:
    app = current_app()
    deadline = math.inf if duration is None else time.monotonic() + duration
    printed = 0

    def full() -> bool:
        return count is not None and printed >= count

    def show(pushes: list[m.Push]) -> None:
        nonlocal printed
        pushes = app.read(pushes)
        shown: list[m.ChatMessage] = []
        kept: list[m.ChatMessage] = []
        for push in pushes:
            if isinstance(push, m.CaughtUp):  # bookkeeping, not an event for people
                continue
            if full():  # past --count: keep messages for inbox, drop the rest
                if isinstance(push, m.MessageDelivered):
                    kept.append(push.message)
                continue
            printed += app.out.event(push, None if count is None else count - printed)
            if isinstance(push, m.MessageDelivered):
                shown.append(push.message)

        def record(profile: Profile) -> None:
            profile.record(shown, shown=True)
            profile.record(kept, shown=False)

        if shown or kept:
            app.update(record)

    profile = app.profile()
    if not profile.logged_in:
        raise not_logged_in()
    backlog = profile.unshown[:count] if count is not None else profile.unshown
    for message in backlog:
        app.out.event(m.MessageDelivered(message=message))
        printed += 1
    ids = {message.id for message in backlog}
    app.update(lambda saved: saved.mark_shown(ids))
    if full():
        return

    def device_added(push: m.DeviceAdded) -> None:
        nonlocal printed
        if not full():
            printed += app.out.event(push)

    app.device.on_device_added = device_added
    with app.connect(resume=True, on_pushes=show) as (session, _server):
        while True:
            session.run_until(lambda: full() or app.device.upload_pending, deadline)
            if full() or time.monotonic() >= deadline:
                break
            app.device.top_up(session)  # (the server asked for one-time keys)


@click.command()
@click.argument("peer")
@click.option("--limit", type=int, default=20, show_default=True, help="How many messages.")
@json_option
def history(peer: str, limit: int) -> None:
    """The last messages with the friend PEER, or in the room PEER ('#room')."""
    app = current_app()
    target = valid_target(peer)
    check_history_limit(limit)
    answer = app.call(lambda conn: conn.get_history(target, limit=limit), m.History)
    shown = app.device.read_history(answer.messages)
    app.out.result(*output.messages_result(shown, empty="no messages"))


COMMANDS: tuple[click.Command, ...] = (send, status, inbox, listen, history)
