"""The ``voiced broker`` command: serve the broker, or manage its devices.

``voiced broker`` serves; ``voiced broker add-device NAME`` prints the new device's token (only
the token, on stdout, so a script can capture it; it is shown this once and stored only as its
hash); ``revoke-device NAME`` stops a device's token from minting; ``list-devices`` shows every
device with its last mint and how many it got. ``--config FILE`` goes before or after the
action. Heavy imports (trio, hypercorn, httpx) happen only when serving.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: `voiced --help` builds this parser, and must stay quick
    from voiced.broker.store import DeviceRecord
    from voiced.config import Config

ACTIONS = ("add-device", "revoke-device", "list-devices")


def add_parser(
    sub: argparse._SubParsersAction[Any],
    common: argparse.ArgumentParser,
    config_help: str,
) -> None:
    """Add ``broker`` and its actions to the subcommands ``sub``.

    Args:
        sub: the ``voiced`` command's subcommands.
        common: the options every subcommand takes (``--debug``).
        config_help: the help of ``--config``.
    """
    broker = sub.add_parser(
        "broker",
        parents=[common],
        help="run the token broker, or add, revoke and list its devices",
        description="Without an action, serve the token broker: it holds the OpenAI API key "
        "(broker.api_key) and mints short-lived Realtime client secrets for registered devices "
        "(POST /v1/token with a device token), so kiosks never hold the key. The actions "
        "manage the devices in broker.devices_file.",
    )
    broker.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    actions = broker.add_subparsers(
        dest="broker_action",
        metavar="ACTION",
        title="actions",
        description="none: serve the broker until SIGINT or SIGTERM",
    )
    # Options after the action: their defaults are left out, so that they never overwrite
    # what was given before the action (`voiced broker --config F add-device NAME`).
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    late.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    add = actions.add_parser(
        "add-device",
        parents=[late],
        help="register a device and print its token (once)",
        description="Register a device and print its new token on stdout: give it to the "
        "device (auth.device_token_file). It is shown only now; the broker keeps its hash.",
    )
    add.add_argument("name", metavar="NAME", help="the device's name, e.g. kiosk-lobby")
    revoke = actions.add_parser(
        "revoke-device",
        parents=[late],
        help="stop a device's token from minting",
        description="Revoke a device: its token mints no more secrets. Secrets it already has "
        "open sessions until they expire (broker.max_ttl_s at most).",
    )
    revoke.add_argument("name", metavar="NAME", help="the device's name")
    actions.add_parser(
        "list-devices",
        parents=[late],
        help="list the devices, their last mint and how many they got",
        description="List every device: when it was added and revoked, its last mint and "
        "how many secrets it got.",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``voiced broker`` as parsed by `add_parser`; returns the exit status.

    Raises:
        ConfigError: the config (no ``broker:``, no API key, the devices file, TLS, the address).
        UsageError: a device name is taken, unknown or not a name.
    """
    from voiced.config import find_config, load_config

    config = load_config(find_config(getattr(args, "config", None)))
    action = getattr(args, "broker_action", None)
    if action is None:
        import trio

        from voiced.broker.serve import serve

        trio.run(serve, config)
        return 0
    if action == "add-device":
        return _add(config, args.name)
    if action == "revoke-device":
        return _revoke(config, args.name)
    return _list(config)


def _add(config: Config, name: str) -> int:
    from voiced.broker.serve import open_devices

    with open_devices(config) as store:
        token = store.add_device(name, time.time())
    print(token, flush=True)
    print(
        f"device {name} added; its token above is not shown again: give it to the device "
        "(auth.device_token_file, or the systemd credential voiced_device_token)",
        file=sys.stderr,
    )
    return 0


def _revoke(config: Config, name: str) -> int:
    from voiced.broker.serve import open_devices

    with open_devices(config) as store:
        revoked = store.revoke_device(name, time.time())
    if revoked:
        print(
            f"device {name} revoked: it mints no more secrets "
            "(those it has still open sessions until they expire)"
        )
    else:
        print(f"device {name} was revoked already")
    return 0


def _list(config: Config) -> int:
    from voiced.broker.serve import open_devices

    with open_devices(config) as store:
        devices = store.devices()
    for line in device_table(devices):
        print(line)
    if not devices:
        print("no devices yet: add one with `voiced broker add-device NAME`", file=sys.stderr)
    return 0


def device_table(devices: list[DeviceRecord]) -> list[str]:
    """The lines of ``list-devices``: a header, then a row per device."""
    from voiced.broker.policy import utc

    rows = [("NAME", "CREATED", "REVOKED", "LAST MINT", "MINTS")]
    for d in devices:
        revoked = utc(d.revoked_at) if d.revoked_at is not None else "-"
        last = utc(d.last_mint) if d.last_mint is not None else "-"
        rows.append((d.name, utc(d.created_at), revoked, last, str(d.mints)))
    width = max(len(row[0]) for row in rows)
    return [f"{n:<{width}}  {c:<20}  {r:<20}  {m:<20}  {k:>5}".rstrip() for n, c, r, m, k in rows]
