"""End-to-end encryption's identities: ``devices`` and ``verify``."""

from __future__ import annotations

from typing import Any

import click

from udpchat_proto import messages as m
from udpchat_proto.chat import valid_username
from udpchat_proto.e2ee import DeviceTrustError, device_fingerprint, normalize_fingerprint

from .. import output
from ..app import App, current_app, hex_bytes, json_option, not_logged_in, refused

__all__ = ["COMMANDS"]


def _user_devices(app: App, user: str) -> tuple[list[dict[str, Any]], bool]:
    """The devices of ``user`` as the server lists them, each checked against this
    device's pins; and whether any was stated with keys other than those pinned."""
    profile = app.profile()
    if not profile.logged_in:
        raise not_logged_in()
    items: list[dict[str, Any]] = []
    changed = False
    with app.connect(resume=True) as (session, _server):
        answer = session.request(lambda conn: conn.get_devices(user=user))
        devices = _expect_devices(answer)
        with app.device.hold() as held:
            for device in devices.devices:
                keys = device.keys
                verified = False
                current = False
                if held.crypto is not None:
                    state = held.crypto.state
                    current = keys.device_id == state.device_id and user == state.user
                    try:
                        verified = state.remember(keys).verified
                    except DeviceTrustError:
                        changed = True
                        continue  # (never listed as if it were the device pinned)
                items.append(
                    {
                        "id": keys.device_id.hex(),
                        "created_at": output.iso_utc(device.created_at),
                        "fingerprint": device_fingerprint(keys.ed25519),
                        "verified": verified,
                        "current": current,
                    }
                )
            held.save()  # (the devices seen are pinned from now on)
    return items, changed


def _expect_devices(answer: m.Response) -> m.UserDevices:
    if isinstance(answer, m.ErrorResponse):
        raise refused(answer.code, answer.message)
    if not isinstance(answer, m.UserDevices):
        raise refused("internal", f"unexpected answer {type(answer).__name__}")
    return answer


@click.command()
@click.argument("user", required=False)
@json_option
def devices(user: str | None) -> None:
    """List USER's devices (yours by default): id, created, fingerprint, verified.

    A device is a login session. Compare a fingerprint with its owner out of band
    (in person, on the phone), then mark it with 'verify'."""
    app = current_app()
    who = valid_username(user) if user is not None else app.profile().username
    if who is None:
        raise not_logged_in()
    items, changed = _user_devices(app, who)
    lines = [
        f"{item['id']}  created {item['created_at']}  {item['fingerprint']}  "
        + ("verified" if item["verified"] else "not verified")
        + ("  (this device)" if item["current"] else "")
        for item in items
    ]
    if changed:
        app.out.error_line(
            f"a device of {who} was stated with keys other than those seen before: not listed"
        )
    app.out.result("\n".join(lines) or f"{who} has no device", {"devices": items})


@click.command()
@click.argument("user")
@click.argument("device", metavar="DEVICE_ID")
@click.argument("fingerprint")
@json_option
def verify(user: str, device: str, fingerprint: str) -> None:
    """Mark USER's device DEVICE_ID verified, after comparing its FINGERPRINT
    with its owner out of band (a mismatch exits 1 and changes nothing)."""
    app = current_app()
    who = valid_username(user)
    device_id = hex_bytes(device)
    items, _changed = _user_devices(app, who)
    if not any(item["id"] == device_id.hex() for item in items):
        raise refused("unknown_device", f"{who} has no device {device}")
    with app.device.hold() as held:
        if held.crypto is None:
            raise not_logged_in()
        state = held.crypto.state
        if (who, device_id) == (state.user, state.device_id):
            matches = normalize_fingerprint(fingerprint) == state.fingerprint
        else:
            matches = state.verify(who, device_id, fingerprint)
            held.save()
    if not matches:
        raise refused(
            "fingerprint_mismatch",
            f"the fingerprint of {who}'s device {device_id.hex()} is not {fingerprint}: "
            "not verified (someone may be posing as that device)",
        )
    app.out.result(
        f"{who}'s device {device_id.hex()} is verified",
        {"ok": True, "user": who, "device": device_id.hex(), "verified": True},
    )


COMMANDS: tuple[click.Command, ...] = (devices, verify)
