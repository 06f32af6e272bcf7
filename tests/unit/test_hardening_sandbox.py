"""The reusable systemd sandbox (rave/sandbox.py): strict by default, loosened only explicitly."""

from rave.modes import PROFILES, Mode
from rave.sandbox import Sandbox, directives, dropin_text, limits_dropin_text


def _as_dict(sandbox: Sandbox, limits=None) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in directives(sandbox, limits):
        found.setdefault(key, []).append(value)
    return found


def test_default_profile_is_strict():
    d = _as_dict(Sandbox())
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert d[key] == [value], key
    assert d["CapabilityBoundingSet"] == [""], "no capabilities at all"
    assert d["AmbientCapabilities"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["SystemCallFilter"][0] == "@system-service"
    assert all(entry.startswith("~") for entry in d["SystemCallFilter"][1:])


def test_limits_of_the_mode_are_applied():
    limits = PROFILES[Mode.SAFE].limits_for("webhook")
    d = _as_dict(Sandbox(), limits)
    assert d["MemoryMax"] == [f"{limits.memory_max_mb}M"]
    assert d["CPUQuota"] == [f"{limits.cpu_quota_percent}%"]
    assert "MemoryMax=" in limits_dropin_text(limits)


def test_loosening_is_explicit_and_the_dropin_is_stable():
    loose = Sandbox(
        memory_deny_write_execute=False,
        read_write_paths=("/var/lib/rave-ccr",),
        capabilities=("CAP_NET_BIND_SERVICE",),
    )
    d = _as_dict(loose)
    assert d["MemoryDenyWriteExecute"] == ["no"]
    assert d["ReadWritePaths"] == ["/var/lib/rave-ccr"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    text = dropin_text(loose, None, "node needs JIT")
    assert text == dropin_text(loose, None, "node needs JIT")
    assert text.startswith("# Managed by RAVE deploy: node needs JIT\n[Service]\n")
