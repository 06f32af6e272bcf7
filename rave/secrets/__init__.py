"""Secrets: age-encrypted per environment in the repo, decrypted only on the host into tmpfs.

model.py   the typed set of values (SecretsModel)
crypto.py  age encryption/decryption (pyrage), recipients and identities
store.py   the files of an environment: <env>.age, <env>.recipients, <env>.versions
cli.py     the operators' tool, `rave-secrets`
deploy.py  what tasks need: secret_path(), the manifest, the recipient check
staging.py the staging environment the harness creates (generated values, no keys needed)
"""
