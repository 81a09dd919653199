"""A small bot: accepts every friend invitation and answers every message it receives.

It answers ``echo: TEXT`` to the sender of a direct message, and in the room for a
room message (``--join ROOM`` to sit in one). Built on ``asyncio_client.py``.

    udpchat-server --port 9999 &
    python examples/echo_bot.py --server 127.0.0.1:9999 --user echo \\
        --password 'correct horse battery staple' --register
    udpchat-cli invite echo && udpchat-cli send echo ping && udpchat-cli inbox --wait 5

``--count N`` stops after N answers and ``--for SECONDS`` after that long (for tests);
otherwise it runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time

from asyncio_client import check, open_client, parse_address

from udpchat_proto import ClientConnection
from udpchat_proto import messages as m
from udpchat_proto.chat import MAX_TEXT_BYTES, is_room


def reply_text(text: str) -> str:
    """``echo: TEXT``, cut to the protocol's size limit on a character boundary."""
    data = f"echo: {text}".encode()[:MAX_TEXT_BYTES]
    return data.decode("utf-8", errors="ignore")


async def run(args: argparse.Namespace) -> int:
    client = await open_client(parse_address(args.server), timeout=args.timeout)
    answered = 0
    try:
        if args.register:
            answer = await client.request(
                lambda c: c.register(args.user, args.password), args.timeout
            )
            if isinstance(answer, m.ErrorResponse) and answer.code != "user_exists":
                check(answer)
        check(await client.request(lambda c: c.login(args.user, args.password), args.timeout))
        for name in args.join:
            room = name if name.startswith("#") else "#" + name  # '#' optional, as in the CLI
            check(
                await client.request(
                    functools.partial(ClientConnection.join_room, room=room), args.timeout
                )
            )
        print(f"{args.user} is listening", flush=True)
        end = time.monotonic() + args.duration if args.duration else None
        while args.count is None or answered < args.count:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                push = await asyncio.wait_for(client.pushes.get(), left)
            except TimeoutError:
                break
            if isinstance(push, m.InvitationReceived):
                user = push.from_user
                await client.request(
                    functools.partial(ClientConnection.accept_invitation, username=user),
                    args.timeout,
                )
                print(f"accepted {user}", flush=True)
            elif isinstance(push, m.MessageDelivered):
                message = push.message
                if message.sender == args.user:
                    continue
                to = message.to if is_room(message.to) else message.sender
                text = reply_text(message.text)
                answer = await client.request(
                    functools.partial(ClientConnection.send_message, to=to, text=text),
                    args.timeout,
                )
                if isinstance(answer, m.ErrorResponse):
                    print(f"could not answer {to}: {answer.code}", file=sys.stderr, flush=True)
                else:
                    answered += 1
                    print(f"answered {to}: {message.text!r}", flush=True)
    finally:
        await client.close()
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:9999", help="HOST:PORT")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--register", action="store_true", help="create the account if needed")
    parser.add_argument(
        "--join", action="append", default=[], metavar="ROOM", help="sit in ROOM ('#' optional)"
    )
    parser.add_argument("--count", type=int, default=None, help="stop after N answers")
    parser.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except (TimeoutError, ConnectionError) as exc:
        print(f"error: no answer from the server: {exc or 'timeout'}", file=sys.stderr)
        raise SystemExit(3) from None
    except ValueError as exc:  # a bad --server, or a name the core refuses
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
