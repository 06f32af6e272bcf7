"""Production inventory: fill in your hosts (docs/DEPLOYMENT-GUIDE.md).

Group `rave` holds service hosts; per-host data overrides group_data/prod.py and all.py.
"""

rave = [
    (
        "rave-prod-1",
        {
            "ssh_hostname": "203.0.113.10",  # documentation address: replace with yours
            "ssh_user": "agent",
            "ssh_key": "~/.ssh/id_ed25519",
            "ssh_strict_host_key_checking": "yes",
            "_sudo": True,
        },
    ),
]
