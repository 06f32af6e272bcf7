"""For host tests of rotations (webhook HMAC, database passwords, TLS, CCR UI password):
rotate a staging secret with the operators' tool, deploy, and return the old and new values.

    from tests.host.secrets_rotation import rotate_and_deploy, staging_value

    old, new = rotate_and_deploy(staging, "postgres_webhook_password")
    # then: the old value stops working, the new one works, the services stayed up
"""

from __future__ import annotations

from typing import Any

from rave.deployrun import DeployResult, run_deploy
from rave.secrets import crypto
from rave.secrets.cli import main as rave_secrets
from rave.secrets.model import SecretsModel
from rave.secrets.store import STAGING_IDENTITY, Environment


def staging_values(staging: Any) -> SecretsModel:
    state = staging.instance.state
    env = Environment.named("staging", state / "secrets")
    return env.decrypt(crypto.load_identities(state / STAGING_IDENTITY))


def staging_value(staging: Any, name: str) -> Any:
    return getattr(staging_values(staging), name)


def rotate_and_deploy(
    staging: Any, name: str, *options: str, deploys: tuple[str, ...] = ("deploy.py",)
) -> tuple[Any, Any, DeployResult]:
    """`rave-secrets rotate NAME` on the staging environment, then deploy; fails loudly."""
    identity = str(staging.instance.state / STAGING_IDENTITY)
    old = staging_value(staging, name)
    code = rave_secrets(["rotate", name, *options, "--env", "staging", "--identity", identity])
    assert code == 0, f"rave-secrets rotate {name} failed"
    new = staging_value(staging, name)
    assert new != old
    result = run_deploy("inventories/staging.py", deploys)
    assert result.ok, f"deploy after rotating {name}: {result.summary()}\n{result.log_tail(60)}"
    return old, new, result
