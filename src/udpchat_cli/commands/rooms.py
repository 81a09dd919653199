"""Rooms: ``join``, ``leave``, ``rooms`` and ``members``."""

from __future__ import annotations

import click

from udpchat_proto import messages as m
from udpchat_proto.chat import valid_room

from .. import output
from ..app import current_app, json_option

__all__ = ["COMMANDS"]


def _room(name: str) -> str:
    """``general`` or ``#general`` -> ``#general``, checked."""
    return valid_room(name if name.startswith("#") else "#" + name)


@click.command()
@click.argument("room")
@json_option
def join(room: str) -> None:
    """Join ROOM ('#' optional), creating it if needed."""
    app = current_app()
    name = _room(room)
    app.call(lambda conn: conn.join_room(name), m.Ok)
    app.out.result(f"joined {name}", {"ok": True, "room": name})


@click.command()
@click.argument("room")
@json_option
def leave(room: str) -> None:
    """Leave ROOM ('#' optional)."""
    app = current_app()
    name = _room(room)
    app.call(lambda conn: conn.leave_room(name), m.Ok)
    app.out.result(f"left {name}", {"ok": True, "room": name})


@click.command()
@json_option
def rooms() -> None:
    """List your rooms with their member counts."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_rooms(), m.Rooms)
    app.out.result(*output.rooms_result(answer))


@click.command()
@click.argument("room")
@json_option
def members(room: str) -> None:
    """List the members of ROOM ('#' optional) and whether they are online."""
    app = current_app()
    name = _room(room)
    answer = app.call(lambda conn: conn.list_members(name), m.RoomMembers)
    app.out.result(*output.members_result(answer))


COMMANDS: tuple[click.Command, ...] = (join, leave, rooms, members)
