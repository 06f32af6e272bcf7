"""Operator tooling: service management, validation, drift, updates (see docs/operations.md).

The ops/*.py deploy files are thin; the logic lives here so it can be unit-tested.
"""
