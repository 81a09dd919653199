"""Accounts people manage themselves, and what they see of their own messages:
change the password, delete the account, a direct message's delivery status, and
one's own messages on every device. Every test runs on MemoryStore and SQLiteStore."""

from __future__ import annotations

from tests.chat_helpers import PASSWORD, ChatUser, ChatWorld, StoreFactory, test_config
from udpchat_proto import HashJob, ScryptParams
from udpchat_proto import messages as m
from udpchat_proto.chat.events import Disconnected
from udpchat_proto.chat.password_jobs import JobKind
from udpchat_proto.errors import ErrorCode

NEW_PASSWORD = "a much better secret"


def second_device(world: ChatWorld, user: ChatUser, device: str = "laptop") -> ChatUser:
    other = world.user(user.name, user.password, device=device)
    other.connect()
    other.login()
    return other


def receipts(user: ChatUser) -> list[m.DeliveryReceipt]:
    """The receipts pushed to the user's current connection, in order."""
    return [r for push in user.pushes(m.DeliveryReceipts) for r in push.receipts]


def closed_reason(user: ChatUser) -> str | None:
    closes = [e.reason for e in user.events() if isinstance(e, Disconnected)]
    return closes[-1] if closes else None


# --- change_password ---------------------------------------------------------------------


def test_a_new_password_ends_every_other_session(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    laptop = second_device(world, alice)
    alice.refused(
        alice.conn.change_password("wrong password", NEW_PASSWORD), ErrorCode.BAD_CREDENTIALS
    )
    world.settle()
    assert closed_reason(laptop) is None  # a wrong password changes nothing
    alice.ok(alice.conn.change_password(PASSWORD, NEW_PASSWORD))
    world.settle()
    assert "password was changed" in (closed_reason(laptop) or "")
    # This session goes on; the old password is gone, the new one works.
    assert alice.ok(alice.conn.list_sessions(), m.Sessions).sessions[0].current
    assert len(alice.ok(alice.conn.list_sessions(), m.Sessions).sessions) == 1
    phone = world.user("alice", PASSWORD, device="phone")
    phone.connect()
    phone.refused(phone.conn.login("alice", PASSWORD), ErrorCode.BAD_CREDENTIALS)
    phone.ok(phone.conn.login("alice", NEW_PASSWORD), m.LoggedIn)
    assert laptop.token is not None
    laptop.connect()
    laptop.refused(laptop.conn.resume(laptop.token), ErrorCode.BAD_CREDENTIALS)
    assert world.server.stats.passwords_changed == 1
    world.check_server_health()


def test_password_guesses_from_a_session_count_as_failed_logins(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    budget = world.config.login_failures_per_user_address.burst
    for _ in range(budget):
        alice.refused(
            alice.conn.change_password("not it at all", NEW_PASSWORD), ErrorCode.BAD_CREDENTIALS
        )
    alice.refused(alice.conn.change_password(PASSWORD, NEW_PASSWORD), ErrorCode.RATE_LIMITED)


def test_requests_pipelined_behind_a_change_wait_for_both_hashes(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    change = alice.conn.change_password(PASSWORD, NEW_PASSWORD)
    listed = alice.conn.list_sessions()
    alice.ok(change)
    assert alice.ok(listed, m.Sessions).sessions  # answered after, in order


def test_an_upgrade_of_the_old_hash_never_undoes_a_change(stores: StoreFactory) -> None:
    # A login at an outdated cost hashes the password again in the background; a
    # change of password that lands first must not be overwritten by it.
    laptop = laptop_at_a_higher_cost(stores)
    world = laptop.world
    world.host.hash_delay = 100.0
    login = laptop.conn.login("alice", PASSWORD)
    world.settle(0.5)
    (job,) = world.host.running_jobs()
    world.host.forget_jobs()
    world.server.complete_hash_job(job.job_id, job.run(), world.net.now)
    laptop.ok(login, m.LoggedIn)  # and the upgrade's hash now runs, for 100 s
    assert len(world.host.running_jobs()) == 1
    world.host.hash_delay = 0.0
    laptop.ok(laptop.conn.change_password(PASSWORD, NEW_PASSWORD))
    world.settle(120.0)  # the upgrade finishes, after the change
    assert world.server.stats.passwords_upgraded == 0
    phone = world.user("alice", device="phone")
    phone.connect()
    phone.refused(phone.conn.login("alice", PASSWORD), ErrorCode.BAD_CREDENTIALS)
    phone.ok(phone.conn.login("alice", NEW_PASSWORD), m.LoggedIn)


def laptop_at_a_higher_cost(stores: StoreFactory) -> ChatUser:
    """alice registered; the server restarted at a higher hash cost (her next login
    hashes her password again); a laptop of hers connected, not logged in."""
    world = ChatWorld(stores)
    world.signed_up("alice")
    world.config = test_config(scrypt=ScryptParams(n=32, r=1, p=1))
    world.restart_server()
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    return laptop


# --- delete_account ----------------------------------------------------------------------


def test_deleting_an_account_removes_it_and_retires_the_name(world: ChatWorld) -> None:
    alice, bob, carol, dave = world.signed_up("alice", "bob", "carol", "dave")
    world.befriend(alice, bob)
    alice.ok(alice.conn.invite("carol"))
    dave.ok(dave.conn.invite("alice"))
    alice.ok(alice.conn.join_room("#tea"))
    bob.ok(bob.conn.join_room("#tea"))
    alice.send("bob", "before I go")
    bob.send("alice", "goodbye")
    laptop = second_device(world, alice)
    alice.refused(alice.conn.delete_account("wrong password"), ErrorCode.BAD_CREDENTIALS)
    alice.ok(alice.conn.delete_account(PASSWORD))
    world.settle()
    assert "account was deleted" in (closed_reason(laptop) or "")
    alice.refused(alice.conn.list_friends(), ErrorCode.NOT_LOGGED_IN)
    # Others are told what an unfriend, a cancel and a leave tell them.
    assert m.Unfriended(by_user="alice") in bob.pushes()
    assert m.InvitationCancelled(by_user="alice") in carol.pushes()
    assert m.RoomMembershipChanged(room="#tea", username="alice", joined=False) in bob.pushes()
    assert bob.ok(bob.conn.list_friends(), m.Friends).friends == ()
    assert bob.ok(bob.conn.list_members("#tea"), m.RoomMembers).members == (
        m.UserPresence(username="bob", online=True),
    )
    assert carol.ok(carol.conn.list_invitations(), m.Invitations).incoming == ()
    assert dave.ok(dave.conn.list_invitations(), m.Invitations).outgoing == ()
    # What she sent stays in bob's history under her name (what waited for her,
    # undelivered, is gone: see test_store).
    history = bob.ok(bob.conn.get_history("alice"), m.History).messages
    assert [(x.sender, x.text) for x in history] == [("alice", "before I go"), ("bob", "goodbye")]
    # To him she is now any stranger, as if the name had never had an account.
    bob.refused(bob.conn.send_message("alice", "hello?"), ErrorCode.NOT_FRIENDS)
    bob.ok(bob.conn.invite("alice"))  # kept, never answered
    # Nobody logs in as her, and the name is never registered again.
    alice.refused(alice.conn.login("alice", PASSWORD), ErrorCode.BAD_CREDENTIALS)
    alice.refused(alice.conn.register("alice", PASSWORD), ErrorCode.USER_EXISTS)
    alice.refused(alice.conn.register("ALICE", "another password"), ErrorCode.USER_EXISTS)
    assert world.server.stats.accounts_deleted == 1
    assert "alice" not in world.server.online_users
    world.check_server_health()


def test_a_deleted_account_survives_a_restart_deleted(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    alice.ok(alice.conn.delete_account(PASSWORD))
    if world.stores.kind != "sqlite":
        return  # nothing outlives a memory store
    world.restart_server()
    alice.connect()
    alice.refused(alice.conn.register("alice", PASSWORD), ErrorCode.USER_EXISTS)


# --- delivery status ---------------------------------------------------------------------


def test_the_sender_learns_when_a_direct_message_was_delivered(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    bob.close()
    sent = alice.send("bob", "are you there?")
    status = alice.ok(alice.conn.message_status(sent.message_id), m.MessageStatus)
    assert (status.to, status.delivered_at) == ("bob", None)
    # Only its sender may ask; others hear of no such message.
    (carol,) = world.signed_up("carol")
    carol.refused(carol.conn.message_status(sent.message_id), ErrorCode.UNKNOWN_MESSAGE)
    alice.refused(alice.conn.message_status(b"\x07" * 16), ErrorCode.UNKNOWN_MESSAGE)
    world.settle(5.0)
    bob.connect()
    bob.resume()
    world.run_until(lambda: bool(receipts(alice)), what="the receipt")
    (receipt,) = receipts(alice)
    assert (receipt.message_id, receipt.to) == (sent.message_id, "bob")
    assert receipt.delivered_at > sent.sent_at
    status = alice.ok(alice.conn.message_status(sent.message_id), m.MessageStatus)
    assert status.delivered_at == receipt.delivered_at
    # Once only: another device of bob's receiving it again changes nothing.
    second_device(world, bob)
    world.settle(5.0)
    assert len(receipts(alice)) == 1
    bob.refused(bob.conn.message_status(sent.message_id), ErrorCode.UNKNOWN_MESSAGE)
    world.check_server_health()


def test_room_messages_have_no_delivery_status(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    alice.ok(alice.conn.join_room("#tea"))
    bob.ok(bob.conn.join_room("#tea"))
    sent = alice.send("#tea", "hello room")
    world.settle(5.0)
    alice.refused(alice.conn.message_status(sent.message_id), ErrorCode.UNKNOWN_MESSAGE)
    assert receipts(alice) == []


def test_a_receipt_survives_a_restart_of_the_server(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    sent = alice.send("bob", "durable")
    world.run_until(lambda: bool(receipts(alice)), what="the receipt")
    if world.stores.kind != "sqlite":
        return
    world.restart_server()
    alice.close()
    alice.connect()
    alice.resume()
    status = alice.ok(alice.conn.message_status(sent.message_id), m.MessageStatus)
    assert status.delivered_at is not None


# --- one's own messages on every device --------------------------------------------------


def test_a_message_sent_from_one_device_reaches_the_others_not_itself(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    laptop = second_device(world, alice)
    bob.send("alice", "one")
    alice.send("bob", "two")
    bob.send("alice", "three")
    alice.ok(alice.conn.join_room("#tea"))
    alice.send("#tea", "four")
    world.settle(5.0)
    assert laptop.texts() == ["one", "two", "three", "four"]
    assert [x.sender for x in laptop.received()] == ["bob", "alice", "bob", "alice"]
    assert alice.texts() == ["one", "three"]
    # A device that was away gets them on its return, once, in order.
    laptop.close()
    alice.send("bob", "five")
    bob.send("alice", "six")
    world.settle()
    laptop.connect()
    laptop.resume()
    world.settle(5.0)
    assert laptop.texts() == ["one", "two", "three", "four", "five", "six"]
    assert alice.texts() == ["one", "three", "six"]
    # Her own device acknowledging her message is not bob's delivery.
    assert all(r.to == "bob" for r in receipts(alice))
    world.check_server_health()


# --- races found by review -----------------------------------------------------------------


def finish_job(world: ChatWorld, job: HashJob) -> None:
    world.server.complete_hash_job(job.job_id, job.run(), world.net.now)
    world.settle(0.5)


def jobs_by_kind(world: ChatWorld) -> dict[JobKind, HashJob]:
    """Take the running jobs from the simulated workers (they finish when told)."""
    jobs = world.host.running_jobs()
    world.host.forget_jobs()
    return {world.server._jobs.pending[job.job_id].kind: job for job in jobs}


def test_a_login_hashing_during_a_change_of_password_fails(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    thief = world.user("alice", device="thief")
    thief.connect()
    world.host.hash_delay = 1000.0  # the jobs finish when the test says
    login = thief.conn.login("alice", PASSWORD)
    change = alice.conn.change_password(PASSWORD, NEW_PASSWORD)
    world.settle(0.5)
    jobs = jobs_by_kind(world)
    finish_job(world, jobs[JobKind.PASSWORD_CHECK])
    (new,) = jobs_by_kind(world).values()
    finish_job(world, new)
    alice.ok(change)
    # The old password was checked, but it is no longer the password.
    finish_job(world, jobs[JobKind.LOGIN])
    thief.refused(login, ErrorCode.BAD_CREDENTIALS)


def test_a_login_hashing_during_a_deletion_fails(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    other = world.user("alice", device="other")
    other.connect()
    world.host.hash_delay = 1000.0
    login = other.conn.login("alice", PASSWORD)
    delete = alice.conn.delete_account(PASSWORD)
    world.settle(0.5)
    jobs = jobs_by_kind(world)
    finish_job(world, jobs[JobKind.PASSWORD_CHECK])
    alice.ok(delete)
    finish_job(world, jobs[JobKind.LOGIN])
    other.refused(login, ErrorCode.BAD_CREDENTIALS)
    assert world.store.sessions_of("alice") == []


def test_nothing_acts_for_a_deleted_account_later_in_its_batch(world: ChatWorld) -> None:
    (alice,) = world.signed_up("alice")
    laptop = second_device(world, alice)
    world.host.hash_delay = 1000.0
    wrong = laptop.conn.change_password("not the password", NEW_PASSWORD)
    join = laptop.conn.join_room("#zombie")  # queued behind that hash
    delete = alice.conn.delete_account(PASSWORD)
    world.settle(0.5)
    jobs = world.host.running_jobs()
    world.host.forget_jobs()
    pending = world.server._jobs.pending
    for job in sorted(
        jobs, key=lambda j: not isinstance(pending[j.job_id].request, m.DeleteAccount)
    ):
        # The deletion's check first, then the laptop's, in one batch.
        world.server.complete_hash_job(job.job_id, job.run(), world.net.now)
    world.settle()
    alice.ok(delete)
    answered = laptop.response(join)
    assert answered is None or isinstance(answered, m.ErrorResponse)
    assert laptop.response(wrong) is None or isinstance(laptop.response(wrong), m.ErrorResponse)
    assert world.store.room_members("#zombie") == []


def test_a_change_right_after_a_login_that_upgrades_the_hash_works(stores: StoreFactory) -> None:
    laptop = laptop_at_a_higher_cost(stores)
    world = laptop.world
    login = laptop.conn.login("alice", PASSWORD)
    change = laptop.conn.change_password(PASSWORD, NEW_PASSWORD)  # pipelined
    laptop.ok(login, m.LoggedIn)
    laptop.ok(change)
    phone = world.user("alice", device="phone")
    phone.connect()
    phone.ok(phone.conn.login("alice", NEW_PASSWORD), m.LoggedIn)


def test_the_status_counts_an_acknowledgement_not_written_yet(world: ChatWorld) -> None:
    # Found by trying it: acknowledgements wait up to CURSOR_WRITE_DELAY to be
    # written; a status asked meanwhile must not say "stored".
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    sent = alice.send("bob", "quick")
    world.run_until(lambda: bob.texts() == ["quick"], what="bob has it")
    world.settle(0.1)  # his acknowledgement has arrived, and waits to be written
    status = alice.ok(alice.conn.message_status(sent.message_id), m.MessageStatus)
    assert status.delivered_at is not None
    world.run_until(lambda: bool(receipts(alice)), what="the receipt")
    (receipt,) = receipts(alice)
    assert receipt.delivered_at == status.delivered_at
