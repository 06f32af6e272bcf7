"""The operator's authorised SSH keys on every host: exactly operator_keys, nothing else.

    pyinfra -y inventories/staging.py ops/operator_keys.py

The same operation as in the hardening task, alone: `rave-secrets operator-keys rotate` runs it
to add a new key, to log in with that key on every host (`--key`), and to remove the old key.
"""

from rave.deploykit import authorise_operator_keys, settings

authorise_operator_keys(settings())
