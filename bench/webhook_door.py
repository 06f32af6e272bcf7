"""What the strict door costs per request, in-process (no host needed).

    .venv/bin/python -m bench.webhook_door

Times `json.loads` (the old check) against `rave.webhook.document.parse` (the new one) on a
small body, a GitHub-push-sized body and one with unicode escapes (the slow path), and prints
microseconds per body. bench/webhook.py measures the whole path through nginx on a host.
"""

from __future__ import annotations

import json
import timeit
from functools import partial

from rave.webhook.document import parse


def push_like() -> bytes:
    commit = {
        "id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "message": "Update README.md\n\nA longer body of the commit message.",
        "timestamp": "2026-12-07T21:00:00+00:00",
        "author": {"name": "Octo Cat", "email": "octocat@example.com", "username": "octocat"},
        "added": [],
        "removed": [],
        "modified": ["README.md", "src/app.py"],
    }
    document = {
        "ref": "refs/heads/main",
        "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
        "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "repository": {"id": 35129377, "name": "public-repo", "private": False, "size": 0,
                       "stargazers_count": 0, "watchers": 0, "forks": 0, "score": 1.5},
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "commits": [commit] * 10,
        "head_commit": commit,
    }  # fmt: skip
    return json.dumps(document).encode()


BODIES = {
    "small": b'{"a": 1}',
    "push (10 commits)": push_like(),
    "with \\u escapes": json.dumps({"text": "caf\u00e9 \u2603 " * 50, "n": 1.25}).encode(),
}


def main() -> int:
    for name, body in BODIES.items():
        runs = 2000  # the best of 5 rounds: the least disturbed by other load
        old = min(timeit.repeat(partial(json.loads, body), number=runs, repeat=5)) / runs
        new = min(timeit.repeat(partial(parse, body), number=runs, repeat=5)) / runs
        print(
            f"{name:20s} {len(body):6d} B  json.loads {old * 1e6:7.1f} us  "
            f"door {new * 1e6:7.1f} us  (+{(new - old) * 1e6:6.1f} us)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
