"""The operator's authorised SSH keys on every host: exactly operator_keys, nothing else.

    pyinfra -y inventories/staging.py ops/operator_keys.py

The same staged change as in the hardening task, alone (sshd_config left as it is): the new
authorized_keys is installed with a revert timer armed on the host, the deploy logs in anew with
its own user and key, and only then confirms; a refused login reverts it at once.
`rave-secrets operator-keys rotate` runs it to add a new key, to log in with that key on every
host (`--key`), and to remove the old key.
"""

from rave.deploykit import settings
from tasks.hardening import staged_ssh_access

staged_ssh_access(settings(), None)
