"""A bot on ``udpchat_proto.asyncio``: accepts every invitation, answers every message.

    udpchat-server --port 9999 &
    python examples/echo_bot.py --server 127.0.0.1:9999 --user echo --password 'echo pass' \\
        --register --join general

It answers ``echo: TEXT`` to the sender, or in the room of a room message. It rides out
a server's restart and a lossy network: the client reconnects, resumes its session,
sends again what was not answered and shows each message once. ``--count N`` stops
after N answers, ``--for SECONDS`` after that long.
"""

import argparse
import asyncio
import contextlib

from udpchat_proto import messages as m
from udpchat_proto.asyncio import ChatClient, RequestRefusedError, connect
from udpchat_proto.chat import MAX_TEXT_BYTES, is_room


async def run(args: argparse.Namespace) -> None:
    host, _, port = args.server.rpartition(":")
    async with await connect((host.strip("[]"), int(port))) as bot:
        if args.register:
            with contextlib.suppress(RequestRefusedError):  # (it exists already)
                await bot.register(args.user, args.password)
        await bot.login(args.user, args.password)
        for room in args.join:
            await bot.join("#" + room.lstrip("#"))
        print(f"{args.user} is listening", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await answer(bot, args.user, args.count)


async def answer(bot: ChatClient, me: str, count: int | None) -> None:
    answered = 0
    async for event in bot:
        if isinstance(event, m.InvitationReceived):
            await bot.accept(event.from_user)
        elif isinstance(event, m.MessageDelivered) and event.message.sender != me:
            got = event.message
            text = f"echo: {got.text}".encode()[:MAX_TEXT_BYTES].decode(errors="ignore")
            await bot.send(got.to if is_room(got.to) else got.sender, text)
            answered += 1
            if answered == count:
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--server", "--user", "--password"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--register", action="store_true", help="create the account if needed")
    parser.add_argument("--join", action="append", default=[], help="sit in a room")
    parser.add_argument("--count", type=int, help="stop after N answers")
    parser.add_argument("--for", dest="duration", type=float, help="stop after SECONDS")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
