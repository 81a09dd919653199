"""The CLI's files and output, without a server: profiles, known_servers, the key
file, and the JSON shapes of the contract."""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path

import pytest

from udpchat_cli import output
from udpchat_cli.profiles import (
    DELIVERED_MAX,
    Home,
    HomeError,
    KnownServers,
    Profile,
    check_profile_name,
)
from udpchat_cli.session import parse_server
from udpchat_proto import messages as m
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.keyfile import KeyFileError, default_key_path, load_or_create_key
from udpchat_server.stores.sqlite import SQLiteStore

WHEN = datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC)


def message(n: int, to: str = "bob", text: str = "hi") -> m.ChatMessage:
    return m.ChatMessage(id=bytes([n]) * 16, sender="alice", to=to, text=text, sent_at=WHEN)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- profiles ------------------------------------------------------------------------


def test_a_missing_profile_is_empty_and_logged_out(tmp_path: Path) -> None:
    profile = Home(tmp_path / "home").load("default")
    assert profile == Profile()
    assert not profile.logged_in


def test_profile_round_trip_and_modes(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.update("alice", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9999"))
    home.update("alice", lambda p: p.record([message(1), message(2, to="#room")], shown=False))
    loaded = home.load("alice")
    assert loaded.username == "alice"
    assert loaded.token == b"t" * 32
    assert loaded.server == "127.0.0.1:9999"
    assert loaded.delivered == [message(1).id, message(2).id]
    assert loaded.unshown == [message(1), message(2, to="#room")]
    assert mode(tmp_path / "home") == 0o700
    assert mode(tmp_path / "home" / "profiles") == 0o700
    assert mode(home.profile_path("alice")) == 0o600
    # Nothing but the profile and its lock is left behind (no temporary files).
    assert sorted(p.name for p in (tmp_path / "home" / "profiles").iterdir()) == [
        "alice.json",
        "alice.lock",
    ]


def test_record_drops_known_ids_and_mark_shown_removes() -> None:
    profile = Profile()
    profile.record([message(1), message(2), message(4)], shown=False)
    # listen printed 2 (another process of the session kept it first): not twice.
    profile.record([message(2), message(3)], shown=True)
    assert profile.delivered == [message(n).id for n in (1, 2, 4, 3)]
    assert profile.unshown == [message(1), message(4)]
    profile.record([message(1)], shown=False)  # known: not kept again
    profile.mark_shown({message(1).id})
    assert profile.unshown == [message(4)]


def test_delivered_ids_are_bounded() -> None:
    profile = Profile()
    ids = [n.to_bytes(16, "big") for n in range(DELIVERED_MAX + 5)]
    profile.record(
        [m.ChatMessage(id=i, sender="a", to="b", text="x", sent_at=WHEN) for i in ids],
        shown=True,
    )
    assert profile.delivered == ids[5:]


def test_login_as_someone_else_forgets_the_inbox_logout_keeps_it() -> None:
    profile = Profile()
    profile.login("alice", b"a" * 32, "s:1")
    profile.record([message(1)], shown=False)
    profile.logout()
    assert not profile.logged_in
    assert profile.unshown == [message(1)]
    profile.login("alice", b"b" * 32, "s:1")
    assert profile.unshown == [message(1)]
    profile.login("bob", b"c" * 32, "s:1")
    assert profile.unshown == [] and profile.delivered == []


def test_a_corrupt_profile_is_a_home_error(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    home.profile_path("default").write_text("{not json")
    with pytest.raises(HomeError, match="cannot read profile"):
        home.load("default")
    home.profile_path("default").write_text(json.dumps({"version": 1, "token": "zz"}))
    with pytest.raises(HomeError, match="corrupt"):
        home.load("default")


@pytest.mark.parametrize("name", ["", ".hidden", "../x", "a/b", "x" * 65, "é"])
def test_profile_names_cannot_escape_the_home(name: str) -> None:
    with pytest.raises(ValueError, match="invalid profile name"):
        check_profile_name(name)


# --- known_servers ---------------------------------------------------------------------


def test_known_servers_pin_on_first_contact_only(tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known_servers")
    assert known.get("127.0.0.1:9999") is None
    known.pin("127.0.0.1:9999", b"\x01" * 32)
    known.pin("127.0.0.1:9999", b"\x02" * 32)  # already pinned: unchanged
    known.pin("[::1]:9999", b"\x03" * 32)
    assert known.get("127.0.0.1:9999") == b"\x01" * 32
    assert known.get("[::1]:9999") == b"\x03" * 32
    assert mode(tmp_path / "known_servers") == 0o600
    assert (tmp_path / "known_servers").read_text() == (
        f"127.0.0.1:9999 {'01' * 32}\n[::1]:9999 {'03' * 32}\n"
    )


def test_known_servers_ignores_comments_and_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.write_text(f"# pinned keys\n\nh:1 {'aa' * 32}  # the lab server\n")
    assert KnownServers(path).get("h:1") == b"\xaa" * 32
    path.write_text("h:1\n")
    with pytest.raises(HomeError, match="line 1"):
        KnownServers(path).get("h:1")


# --- the server's key file ---------------------------------------------------------------


def test_key_file_is_created_0600_then_reused(tmp_path: Path) -> None:
    path = default_key_path(tmp_path / "udpchat.sqlite3")
    assert path.name == "udpchat.sqlite3.key"
    key, created = load_or_create_key(path, SeededRandomSource(1))
    assert created
    assert mode(path) == 0o600
    assert path.read_bytes() == key.private_bytes
    again, created = load_or_create_key(path, SeededRandomSource(2))
    assert not created
    assert again.fingerprint == key.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_bad_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a udpchat server key"):
        load_or_create_key(path)
    with pytest.raises(KeyFileError, match="cannot create"):
        load_or_create_key(tmp_path / "missing-dir" / "key")


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "server.key"
    load_or_create_key(path, SeededRandomSource(1))
    os.chmod(path, loose)
    with pytest.raises(KeyFileError, match=f"accessible by others \\(mode {loose:o}\\).*chmod 600"):
        load_or_create_key(path)
    os.chmod(path, 0o600)
    assert load_or_create_key(path)[1] is False


def test_the_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    with SQLiteStore.open(path) as store:
        store.join_room("#a", "alice", 1.0)
        store.commit()
        files = [path, tmp_path / "chat.sqlite3-wal", tmp_path / "chat.sqlite3-shm"]
        assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    # One made readable by others (an older release, a careless copy) is narrowed.
    os.chmod(path, 0o644)
    with SQLiteStore.open(path):
        assert mode(path) == 0o600


def test_key_file_created_by_someone_else_meanwhile_wins(tmp_path: Path) -> None:
    path = tmp_path / "key"
    theirs = ServerKey.generate(SeededRandomSource(3))

    class Racing(SeededRandomSource):
        def token_bytes(self, n: int) -> bytes:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, theirs.private_bytes)
            os.close(fd)
            return super().token_bytes(n)

    key, created = load_or_create_key(path, Racing(4))
    assert not created
    assert key.private_bytes == theirs.private_bytes


# --- output ------------------------------------------------------------------------------


def test_message_json_is_the_contracts_m() -> None:
    assert output.message_json(message(1, to="#general")) == {
        "id": "01" * 16,
        "from": "alice",
        "to": "#general",
        "text": "hi",
        "sent_at": "2024-05-01T12:00:00.250000Z",
        "encrypted": False,
    }


def test_iso_utc_converts_other_zones() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert output.iso_utc(datetime.datetime(2024, 1, 1, 2, 0, tzinfo=plus_two)) == (
        "2024-01-01T00:00:00.000000Z"
    )


def test_message_text_marks_each_further_line() -> None:
    first, second = output.message_text(message(1, text="two\nlines")).split("\n")
    assert first.endswith("alice -> bob: two")
    assert second == output.CONTINUATION + "lines"


def test_list_shapes() -> None:
    presence = (m.UserPresence(username="bob", online=True),)
    assert output.invitations_result(
        m.Invitations(request_id=1, incoming=("carol",), outgoing=("dave",))
    )[1] == {"incoming": ["carol"], "outgoing": ["dave"]}
    assert output.friends_result(m.Friends(request_id=1, friends=presence))[1] == {
        "friends": [{"user": "bob", "online": True}]
    }
    assert output.online_result(m.OnlineUsers(request_id=1, usernames=("alice",)))[1] == {
        "online": ["alice"]
    }
    rooms = m.Rooms(request_id=1, rooms=(m.RoomInfo(room="#general", members=3),))
    assert output.rooms_result(rooms) == (
        "#general (3 members)",
        {"rooms": [{"room": "#general", "members": 3}]},
    )
    members = m.RoomMembers(request_id=1, room="#general", members=presence)
    assert output.members_result(members) == (
        "bob online",
        {"room": "#general", "members": [{"user": "bob", "online": True}]},
    )
    assert output.messages_result([], empty="no new messages") == (
        "no new messages",
        {"messages": []},
    )


@pytest.mark.parametrize(
    ("push", "expected"),
    [
        (m.InvitationReceived(from_user="carol"), {"event": "invitation", "from": "carol"}),
        (
            m.InvitationAnswered(by_user="bob", accepted=True),
            {"event": "invitation_accepted", "by": "bob"},
        ),
        (
            m.InvitationAnswered(by_user="bob", accepted=False),
            {"event": "invitation_declined", "by": "bob"},
        ),
        (m.InvitationCancelled(by_user="bob"), {"event": "invitation_cancelled", "by": "bob"}),
        (m.Unfriended(by_user="bob"), {"event": "unfriended", "by": "bob"}),
        (
            m.PresenceChanged(username="bob", online=False),
            {"event": "presence", "user": "bob", "online": False},
        ),
        (
            m.RoomMembershipChanged(room="#general", username="bob", joined=True),
            {"event": "joined", "room": "#general", "user": "bob"},
        ),
        (
            m.RoomMembershipChanged(room="#general", username="bob", joined=False),
            {"event": "left", "room": "#general", "user": "bob"},
        ),
    ],
)
def test_listen_event_shapes(push: output.EventPush, expected: dict[str, object]) -> None:
    assert output.event_json(push) == expected
    assert output.event_text(push)


EVERY_PUSH: list[m.Push] = [
    m.MessageDelivered(message=message(7)),
    m.DeliveryReceipts(
        receipts=tuple(
            m.DeliveryReceipt(message_id=bytes([n]) * 16, to="bob", delivered_at=WHEN)
            for n in (1, 2)
        )
    ),
    m.PresenceChanged(username="bob", online=True),
    m.InvitationReceived(from_user="carol"),
    m.InvitationAnswered(by_user="bob", accepted=False),
    m.InvitationCancelled(by_user="bob"),
    m.Unfriended(by_user="bob"),
    m.RoomMembershipChanged(room="#general", username="bob", joined=True),
    m.CaughtUp(),
]


@pytest.mark.parametrize("json_mode", [False, True])
def test_output_prints_every_push(capsys: pytest.CaptureFixture[str], json_mode: bool) -> None:
    # A push the protocol gains must be printed (or skipped) on purpose: here, and
    # in output.py, where mypy checks that the match on pushes is exhaustive.
    assert {type(push) for push in EVERY_PUSH} == set(m.PUSH_TYPES)
    out = output.Output(json_mode=json_mode)
    printed = {type(push): out.event(push) for push in EVERY_PUSH}
    lines = capsys.readouterr().out.splitlines()
    assert printed[m.CaughtUp] == 0  # bookkeeping, not an event for people
    assert printed[m.DeliveryReceipts] == 2  # one event per receipt
    assert sum(printed.values()) == len(lines) == len(EVERY_PUSH)
    if json_mode:
        assert all("event" in json.loads(line) for line in lines)


def test_listen_message_event() -> None:
    push = m.MessageDelivered(message=message(7))
    assert output.event_json(push) == {"event": "message", **output.message_json(message(7))}


def test_errors_go_to_stderr_and_with_json_to_stdout_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.Output(json_mode=False).error("not_friends", "you are\nnot friends")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: you are not friends\n")
    output.Output(json_mode=True).error("not_friends", "nope")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"ok": False, "error": "not_friends", "message": "nope"}
    assert captured.err == "error: nope\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token", "ab" * 2),  # not 32 bytes: the core would refuse it as bad_request
        ("server", "nonsense"),  # would be a usage error (exit 2) for a file problem
        ("server", "127.0.0.1:99999"),
        ("username", "Not A Name"),
    ],
)
def test_a_profile_with_unusable_values_is_corrupt(tmp_path: Path, field: str, value: str) -> None:
    home = Home(tmp_path)
    home.update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9999"))
    data = json.loads(home.profile_path("default").read_text())
    data[field] = value
    home.profile_path("default").write_text(json.dumps(data))
    with pytest.raises(HomeError, match="corrupt"):
        home.load("default")


def test_known_servers_refuses_a_key_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.write_text("h:1 abcd\n")
    with pytest.raises(HomeError, match="line 1"):
        KnownServers(path).get("h:1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9999", ("127.0.0.1", 9999)),
        ("[::1]:9999", ("::1", 9999)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "nohost",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "[::1]",
        "::1:9999",
        ":99",
        "h:+1",
        "h:\uff11\uff12",
        "h:\u00b2",
    ],
)
def test_parse_server_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid server address"):
        parse_server(text)
