"""`rave-ops dead-letters`: the webhook receiver's dead letters on each host (ops/dead_letters.py).

A dead letter is a spooled delivery PostgreSQL refused on its own (rave/webhook/deadletter.py).
The host command runs as the receiver's user, with its configuration; only `show` prints a
letter's payload (list, redrive and discard print ids, providers, delivery ids and reasons).

The request travels from rave-ops to the pyinfra run in the environment variable ENV (a JSON
list of the host command's arguments), checked again here before anything runs on a host.
"""

from __future__ import annotations

import json
import re
import shlex

ENV = "RAVE_OPS_DEAD_LETTERS"
ACTIONS = ("list", "show", "redrive", "discard")
# a letter id is the record's sha256 (hex); any unique prefix names it
LETTER_ID = re.compile(r"^[0-9a-f]{1,64}$")
# the receiver as deployed by tasks/webhook.py (LIB_DIR, PACKAGE, CONFIG_FILE, its user)
LIB_DIR = "/opt/rave/lib"
MODULE = "rave_webhook.deadletter"
CONFIG_FILE = "/etc/rave-webhook/config.json"
USER = "rave-webhook"


def request(action: str, letter: str | None = None, every: bool = False) -> list[str]:
    """The host command's arguments; ValueError naming what is wrong."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if letter is not None and not LETTER_ID.match(letter):
        raise ValueError(f"{letter!r} is not a letter id (hex, as `list` prints it)")
    if action == "list":
        if letter is not None or every:
            raise ValueError("list takes no id and no --all")
        return ["list"]
    if action == "show":
        if letter is None or every:
            raise ValueError("show takes one letter id (no --all)")
        return ["show", letter]
    if (letter is None) == (not every):
        raise ValueError(f"{action} takes one letter id or --all")
    return [action, "--all"] if every else [action, letter or ""]


def encode(args: list[str]) -> str:
    return json.dumps(args)


def decode(text: str | None) -> list[str]:
    """The arguments rave-ops put in ENV (default: list), checked as `request` checks them."""
    if not text:
        return ["list"]
    try:
        args = json.loads(text)
    except ValueError:
        raise ValueError(f"{ENV} is not JSON") from None
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{ENV} must be a JSON list of strings")
    action, rest = args[0], args[1:]
    every = rest == ["--all"]
    letter = None if every or not rest else rest[0]
    if len(rest) > 1 or (rest and not every and letter is None):
        raise ValueError(f"{ENV}: too many arguments {args}")
    built = request(action, letter, every)
    if built != args:
        raise ValueError(f"{ENV}: unexpected arguments {args}")
    return built


def host_command(args: list[str]) -> str:
    """The shell command run (with sudo) on the host: the receiver's CLI as its user."""
    command = [
        "runuser",
        "-u",
        USER,
        "--",
        "env",
        f"PYTHONPATH={LIB_DIR}",
        f"RAVE_WEBHOOK_CONFIG={CONFIG_FILE}",
        "python3",
        "-m",
        MODULE,
        *args,
    ]
    # from /: the receiver's user cannot read the operator's home (python3 -m looks in the cwd)
    return "cd / && " + shlex.join(command)
