"""Production inventory: fill in your hosts (docs/DEPLOYMENT-GUIDE.md).

Group `rave` holds service hosts; per-host data overrides group_data/prod.py and all.py.
An optional group `monitoring` holds the monitoring host (docs/scaling.md): its Prometheus
scrapes every service host's exporters, and each service host's firewall opens the exporter
ports to the monitoring host's address only — both derived from these groups (rave/topology.py).
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

# Growing past one host: more service hosts in `rave`, and one monitoring host.
# rave = [
#     ("rave-prod-1", {"ssh_hostname": "203.0.113.10", ...}),
#     ("rave-prod-2", {"ssh_hostname": "203.0.113.11", ...}),
# ]
# monitoring = [
#     (
#         "rave-mon-1",
#         {
#             "ssh_hostname": "203.0.113.20",
#             "ssh_user": "agent",
#             "ssh_key": "~/.ssh/id_ed25519",
#             "ssh_strict_host_key_checking": "yes",
#             "_sudo": True,
#         },
#     ),
# ]
