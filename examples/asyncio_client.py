"""A command-line client on ``udpchat_proto.asyncio``: sign up, log in, send, listen.

``udpchat_proto.asyncio.connect`` does what an asyncio program needs around the sans-IO
``ClientConnection`` (the datagram endpoint, the timer, matching answers to requests,
reconnecting), so a client is its requests::

    udpchat-server --port 9999 &
    python examples/asyncio_client.py --server 127.0.0.1:9999 --user alice \\
        --password 'correct horse battery staple' --register --send bob 'hi from asyncio'

The first contact's server key is printed; pass it as ``--server-key HEX`` to pin it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from udpchat_proto import ProtocolError, fingerprint
from udpchat_proto.asyncio import connect


def first_contact(key: bytes) -> bool:
    print(f"first contact: server key {fingerprint(key)} (--server-key {key.hex()})")
    return True


async def run(args: argparse.Namespace) -> None:
    host, _, port = args.server.rpartition(":")
    key = bytes.fromhex(args.server_key) if args.server_key else None
    async with await connect(
        (host.strip("[]"), int(port)),
        server_key=key,
        on_first_contact=first_contact,
        timeout=args.timeout,
    ) as client:
        if args.register:
            await client.register(args.user, args.password)
            print(f"registered {args.user}")
        logged_in = await client.login(args.user, args.password)
        print(f"logged in as {logged_in.username}")
        print(f"online: {', '.join((await client.online()).usernames)}")
        if args.send:
            to, text = args.send
            accepted = await client.send(to, text)
            print(f"sent {accepted.message_id.hex()} to {to}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.listen):
                async for push in client:
                    print(f"push: {push}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:9999", help="HOST:PORT")
    parser.add_argument("--server-key", help="the pinned public key, hex (default: any)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--register", action="store_true", help="create the account first")
    parser.add_argument("--send", nargs=2, metavar=("TO", "TEXT"), help="send one message")
    parser.add_argument("--listen", type=float, default=0.0, help="print pushes this long")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except TimeoutError:
        print("error: no answer from the server", file=sys.stderr)
        raise SystemExit(3) from None
    except (ProtocolError, ValueError) as exc:  # a refusal, a changed key, a bad --server
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
