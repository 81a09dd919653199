"""One account or one address cannot lock anyone else out of logging in.

Each test reproduces an attack found against the running server and shows it
contained: a flood of logins from one address, guesses in flight, a stranger's
failures against someone else's account, an unbounded number of sessions.
"""

from __future__ import annotations

from tests.chat_helpers import FAST_SCRYPT, PASSWORD, ChatUser, ChatWorld, StoreFactory, test_config
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.errors import ErrorCode
from udpchat_proto.ratelimit import RateLimit

GENEROUS = RateLimit(burst=10_000, interval=0.001)


def connections(user: ChatUser, count: int) -> list[ClientConnection]:
    """``count`` connections from one address (the user's host, new ports)."""
    opened = [user.connect(wait=False) for _ in range(count)]
    user.world.run_until(lambda: all(c.is_connected for c in opened), what="connections")
    return opened


def answers(user: ChatUser) -> list[m.Response]:
    return [e for e in user.all_events() if isinstance(e, m.RESPONSE_TYPES)]


def test_a_login_flood_from_one_address_delays_another_by_about_one_hash(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(
        stores, config=test_config(logins_per_user=GENEROUS, login_failures_per_user=GENEROUS)
    )
    world.signed_up("alice", "bob")
    world.host.workers, world.host.hash_delay = 2, 0.1  # two threads, 100 ms a hash
    flooder = world.user("alice", device="flood")
    flood = connections(flooder, 80)
    for conn in flood:  # 80 logins at once from one address, as one valid account
        conn.login("alice", PASSWORD)
    victim = world.user("bob", device="laptop")
    victim.connect()
    started = world.net.now
    victim.login()
    # Round-robin: the running jobs at most were ahead of it, about one hash time.
    assert world.net.now - started < 0.35
    refusals = [a for a in answers(flooder) if isinstance(a, m.ErrorResponse)]
    assert refusals and {a.code for a in refusals} == {ErrorCode.RATE_LIMITED}
    assert world.server.pending_hash_jobs <= world.config.max_hash_jobs_per_address
    world.check_server_health()


def test_guesses_in_flight_are_charged_at_once(stores: StoreFactory) -> None:
    config = test_config(
        max_hash_jobs_per_address=100,
        max_hash_jobs_per_user=100,
        login_failures_per_user_address=RateLimit(burst=5, interval=60.0),
    )
    world = ChatWorld(stores, config=config)
    world.signed_up("alice")
    world.host.hash_delay = 1.0  # every guess is in flight at once
    mallory = world.user("mallory")
    guesses = connections(mallory, 40)
    jobs = world.server.stats.hash_jobs
    for conn in guesses:
        conn.login("alice", "wrong password")
    world.settle(3.0)
    codes = [a.code for a in answers(mallory) if isinstance(a, m.ErrorResponse)]
    # Five guesses were checked (and failed); the other 35 were never hashed.
    assert world.server.stats.hash_jobs - jobs == 5
    assert codes.count(ErrorCode.BAD_CREDENTIALS) == 5
    assert codes.count(ErrorCode.RATE_LIMITED) == 35


def test_a_right_password_gives_its_charge_back(stores: StoreFactory) -> None:
    config = test_config(login_failures_per_user_address=RateLimit(burst=2, interval=60.0))
    world = ChatWorld(stores, config=config)
    (alice,) = world.signed_up("alice")
    for _ in range(5):  # more than the failure budget: every one was refunded
        alice.login()


def test_a_strangers_failures_do_not_lock_the_owner_out(stores: StoreFactory) -> None:
    world = ChatWorld(stores, config=test_config(logins_per_user=GENEROUS))
    world.signed_up("alice")
    mallory = world.user("mallory")
    mallory.connect()
    for _ in range(5):  # the (alice, mallory's address) budget: 5
        mallory.refused(mallory.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
    mallory.refused(mallory.conn.login("alice", "guess guess"), ErrorCode.RATE_LIMITED)
    # The owner, from her own address, logs in as if nothing happened.
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    assert laptop.login().username == "alice"
    # One address cannot keep several users locked either: each lock is its own.
    world.signed_up("bob")
    bob = world.user("bob", device="phone")
    bob.connect()
    assert bob.login().username == "bob"


def test_a_high_ceiling_per_user_still_holds_against_many_addresses(stores: StoreFactory) -> None:
    config = test_config(
        login_failures_per_user=RateLimit(burst=6, interval=60.0),
        login_failures_beyond_ceiling=RateLimit(burst=1, interval=3600.0),
    )
    world = ChatWorld(stores, config=config)
    world.signed_up("alice")
    jobs = world.server.stats.hash_jobs
    guessers = []
    for n in range(3):  # three addresses, two guesses each: the ceiling of 6
        guesser = world.user("mallory", device=str(n))
        guesser.connect()
        guessers.append(guesser)
        for _ in range(2):
            guesser.refused(guesser.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
    # Beyond it, each address has its own allowance (1 here), and then no more.
    for guesser in [*guessers, world.user("mallory", device="late")]:
        if guesser.connection is None:
            guesser.connect()
        guesser.refused(guesser.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
        guesser.refused(guesser.conn.login("alice", "guess guess"), ErrorCode.RATE_LIMITED)
    # Hashed: the ceiling, plus one per address: 6 + 4.
    assert world.server.stats.hash_jobs - jobs == 10


def test_a_distributed_guesser_cannot_lock_the_owner_out(stores: StoreFactory) -> None:
    """The issue's attack, at the default limits: 100 wrong passwords from 20
    addresses spent alice's ceiling, so her right password was ``rate_limited``;
    and a guess every 6 s (the ceiling's refill) kept it spent."""
    world = ChatWorld(stores)
    world.signed_up("alice")
    guessers = [world.user("mallory", device=str(n)) for n in range(20)]
    for guesser in guessers:
        guesser.connect()
        for _ in range(5):
            guesser.refused(guesser.conn.login("alice", "guess guess"), ErrorCode.BAD_CREDENTIALS)
        # From one address, the guesses stop there.
        guesser.refused(guesser.conn.login("alice", "guess guess"), ErrorCode.RATE_LIMITED)
    # The owner, from an address that has not failed, gets in, even after a typo.
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    laptop.refused(laptop.conn.login("alice", "correct hosre"), ErrorCode.BAD_CREDENTIALS)
    assert laptop.login().username == "alice"
    # Ten minutes of a guess every 6 s, the addresses taking turns, while the owner
    # logs in every minute: the guesser takes every token the ceiling gets back,
    # and the owner still gets in every time.
    guessed = 0
    for second in range(0, 600, 6):
        guesser = guessers[(second // 6) % 20]
        answer = guesser.wait(guesser.conn.login("alice", "guess guess"))
        assert isinstance(answer, m.ErrorResponse)
        guessed += answer.code is ErrorCode.BAD_CREDENTIALS
        if second % 60 == 0:
            assert laptop.login().username == "alice"
        world.net.run_for(6.0 - 0.01 * (second % 60 == 0))
    # Bounded all the same: about the ceiling's refill (10 a minute), plus the two
    # of each address's own allowance.
    assert 50 <= guessed <= 100 + 2 * 20


def test_logins_to_one_account_are_throttled_even_when_right(stores: StoreFactory) -> None:
    config = test_config(logins_per_user=RateLimit(burst=3, interval=60.0))
    world = ChatWorld(stores, config=config)
    (alice,) = world.signed_up("alice")  # one login
    alice.login()
    alice.login()
    alice.refused(alice.conn.login("alice", PASSWORD), ErrorCode.RATE_LIMITED)
    world.net.run_for(61.0)
    alice.login()


def test_one_login_per_account_is_checked_at_a_time(stores: StoreFactory) -> None:
    world = ChatWorld(
        stores, config=test_config(max_hash_jobs_per_address=10, max_hash_jobs_per_user=1)
    )
    world.signed_up("alice")
    world.host.hash_delay = 1.0
    alice = world.user("alice", device="two")
    first, second = connections(alice, 2)
    first.login("alice", PASSWORD)
    second.login("alice", PASSWORD)
    world.settle(3.0)
    kinds = sorted(type(a).__name__ for a in answers(alice))
    assert kinds == ["ErrorResponse", "LoggedIn"]


def test_sessions_per_user_are_capped_and_the_least_recently_used_ends(
    stores: StoreFactory,
) -> None:
    config = test_config(max_sessions_per_user=3, logins_per_user=GENEROUS)
    world = ChatWorld(stores, config=config)
    (alice,) = world.signed_up("alice")  # session 1, on this connection
    oldest = alice.conn
    devices = [world.user("alice", device=str(n)) for n in range(3)]
    for device in devices:
        device.connect()
        device.login()  # sessions 2, 3, 4: the fourth ends the least recently used
        world.net.run_for(1.0)
    assert len(world.store.sessions_of("alice")) == 3
    assert world.server.stats.sessions_evicted == 1
    # The evicted session's connection is anonymous now; the others still act.
    response = alice.wait(oldest.list_friends())
    assert isinstance(response, m.ErrorResponse) and response.code is ErrorCode.NOT_LOGGED_IN
    for device in devices:
        device.ok(device.conn.list_friends(), m.Friends)


def test_an_abandoned_hash_job_answers_and_frees_its_place(stores: StoreFactory) -> None:
    config = test_config(
        max_hash_jobs_per_address=1,
        # One failure allowed: the abandoned check must not count as one.
        login_failures_per_user_address=RateLimit(burst=1, interval=3600.0),
    )
    world = ChatWorld(stores, config=config)
    world.signed_up("alice")
    world.host.hash_delay = 100.0  # the job never finishes by itself
    alice = world.user("alice", device="two")
    alice.connect()
    request = alice.conn.login("alice", PASSWORD)
    world.settle(0.5)
    (job,) = world.host.running_jobs()
    world.server.abandon_hash_job(job.job_id, world.net.now)
    world.host.forget_jobs()
    alice.refused(request, ErrorCode.INTERNAL)
    world.host.hash_delay = 0.0
    assert alice.login().username == "alice"  # the address's place is free again,
    # and its failure budget was given back (the check proved nothing)


def test_an_account_hashed_at_an_older_cost_is_hashed_again_at_login(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores)  # FAST_SCRYPT: n=16, r=1
    (alice,) = world.signed_up("alice")
    old = world.store.get_account("alice")
    assert old is not None and old.password.params == FAST_SCRYPT
    world.config = test_config(scrypt=ScryptParams(n=32, r=1, p=1))
    world.restart_server()
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    laptop.login()
    world.settle(0.5)
    new = world.store.get_account("alice")
    assert new is not None and new.password.params == ScryptParams(n=32, r=1, p=1)
    assert new.password.salt != old.password.salt
    assert world.server.stats.passwords_upgraded == 1
    # The new record works, and it is not upgraded again.
    other = world.user("alice", device="phone")
    other.connect()
    other.login()
    world.settle(0.5)
    assert world.server.stats.passwords_upgraded == 1
    alice.connect()  # (its connection was to the server before the restart)
    alice.refused(alice.conn.login("alice", "not the password"), ErrorCode.BAD_CREDENTIALS)


def test_strangers_checks_in_flight_never_hold_the_owners_place(stores: StoreFactory) -> None:
    # The cap on hashes at once per account counted all addresses together: a few
    # wrong guesses in flight, from fresh addresses, kept the owner's login refused
    # "a login for alice is already being checked". Each address counts apart now.
    world = ChatWorld(stores)
    world.signed_up("alice")
    world.host.hash_delay = 1.0  # each check takes a second: they pile up
    guessers = [world.user("mallory", device=str(n)) for n in range(4)]
    for guesser in guessers:
        guesser.connect()
        guesser.conn.login("alice", "guess guess")
        guesser.conn.login("alice", "guess guess")
    laptop = world.user("alice", device="laptop")
    laptop.connect()
    world.net.run_for(0.1)  # every guess is being checked when the owner comes
    assert laptop.login().username == "alice"
    # (One address still may not: test_one_login_per_account_is_checked_at_a_time.)
