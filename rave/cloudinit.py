"""cloud-init user data for a new cloud VM: the operator account and key, so pyinfra can take over.

    rave-cloud-init --group-data group_data/prod.py --hostname rave-prod-1 > user-data.yaml

The keys are validated like every other setting (ssh-ed25519 only, never empty).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rave.settings.base import BaseSettings


def user_data(hostname: str, operator_user: str, operator_keys: list[str]) -> dict[str, Any]:
    checked = BaseSettings(
        hostname=hostname, operator_user=operator_user, operator_keys=operator_keys
    )
    return {
        "hostname": checked.hostname,
        "preserve_hostname": False,
        "groups": ["rave-ssh"],
        "users": [
            {
                "name": checked.operator_user,
                "groups": ["rave-ssh"],
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": list(checked.operator_keys),
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        # only an Ed25519 host key, as the hardening task expects
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519"],
        "package_update": True,
        "packages": ["python3", "sudo"],
    }


def render(data: dict[str, Any]) -> str:
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)


def _settings_from(group_data: Path) -> tuple[str, list[str]]:
    values = runpy.run_path(str(group_data))
    return values.get("operator_user", "agent"), list(values.get("operator_keys", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rave-cloud-init", description=__doc__.splitlines()[0])
    parser.add_argument("--group-data", type=Path, default=Path("group_data/prod.py"))
    parser.add_argument("--hostname", required=True)
    args = parser.parse_args(argv)
    operator_user, keys = _settings_from(args.group_data)
    try:
        print(render(user_data(args.hostname, operator_user, keys)), end="")
    except ValidationError as error:
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"])
            print(f"{args.group_data}: {field}: {item['msg']}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
