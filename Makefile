# RAVE deploy: `make staging` boots a local staging host and deploys; `make test` is what CI runs.
# Everything runs as root on a Debian 12 machine (staging hosts need namespaces and mounts).

SHELL := /bin/bash
.DEFAULT_GOAL := venv

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# Debian packages the control machine needs (one list: append, keep it sorted by purpose)
SYSTEM_PACKAGES := python3-venv make git systemd systemd-container debootstrap tinyproxy iproute2 \
	openssh-client age openssl restic postgresql-client nftables curl \
	postgresql-15 prometheus gpg qemu-system-x86 e2fsprogs

.PHONY: venv lock system-deps staging staging-down lint typecheck unit host-tests test test-multihost \
	test-vm

venv: $(VENV)/.installed

# requirements.lock pins every distribution (the tools too: a new ruff or mypy release must not
# turn main red on its own); `make lock` refreshes it from pyproject.toml's ranges.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[dev]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

system-deps:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing; \
	else echo "system packages present"; fi

staging: system-deps venv
	$(BIN)/rave-staging up
	$(BIN)/pyinfra -y inventories/staging.py deploy.py
	$(BIN)/rave-staging info

staging-down: venv
	$(BIN)/rave-staging down

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# every Python file the project ships: pyproject.toml's [tool.mypy] files, then the pyinfra data
# directories apart (their modules share names: staging.py, prod.py)
typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy group_data
	$(BIN)/mypy inventories

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

host-tests: venv
	$(BIN)/pytest tests/host $(PYTEST_ARGS)

# lint and types first, then every suite under tests/ (unit, then host tests on fresh hosts);
# the VM suite has its own target (make test-vm: minutes of TCG emulation, docs/staging.md)
test: lint typecheck
	$(BIN)/pytest tests --ignore=tests/vm $(PYTEST_ARGS)

# 2 service hosts + 1 monitoring host: every host suite on the service hosts, plus
# tests/host/test_multihost.py (skipped by `make test`); not part of `make test` (CI time)
test-multihost: venv
	RAVE_STAGING_HOSTS=3 RAVE_STAGING_MONITORING=1 $(BIN)/pytest tests/host $(PYTEST_ARGS)

# a QEMU VM on the staging bridge: auditd, AppArmor and kernel.* sysctls, which containers
# cannot have (tests/vm/test_vm_hardening.py; -s prints the boot and deploy times)
test-vm: venv
	$(BIN)/pytest -s tests/vm $(PYTEST_ARGS)
