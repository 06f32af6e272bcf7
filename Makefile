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
	postgresql-15 prometheus gpg qemu-system-x86 qemu-utils e2fsprogs

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

# the multi-host suite runs on an instance of its own (never the single-host suites' hosts):
# the next staging ID, its state in .staging-multihost/ (docs/staging.md)
STAGING_ID := $(or $(RAVE_STAGING_ID),0)
MULTIHOST_STAGING_ID ?= $(shell echo $$(( $(STAGING_ID) < 254 ? $(STAGING_ID) + 1 : 253 )))
MULTIHOST_ENV := RAVE_STAGING_ID=$(MULTIHOST_STAGING_ID) RAVE_STAGING_DIR=$(CURDIR)/.staging-multihost \
	RAVE_STAGING_HOSTS=3 RAVE_STAGING_MONITORING=1
SINGLE_HOST := --ignore=tests/vm --ignore=tests/host/test_multihost.py

host-tests: venv
	$(BIN)/pytest tests/host $(SINGLE_HOST) $(PYTEST_ARGS)

# what CI runs, in order: lint and types; unit tests and every single-host suite (one fresh
# host); the multi-host suite (2 service hosts + 1 monitoring host, its own instance, torn down
# after); the VM suite (auditd, AppArmor, kernel sysctls)
test: lint typecheck
	$(BIN)/pytest tests $(SINGLE_HOST) $(PYTEST_ARGS)
	$(MAKE) test-multihost
	$(MAKE) test-vm

# tests/host/test_multihost.py on a fresh 3-host instance (up --fresh clears a previous run's
# leftovers); the instance is stopped afterwards, whether the suite passed or not
test-multihost: venv
	$(MULTIHOST_ENV) $(BIN)/pytest tests/host/test_multihost.py $(PYTEST_ARGS); status=$$?; \
		$(MULTIHOST_ENV) $(BIN)/rave-staging down; exit $$status

# a QEMU VM on the staging bridge: auditd, AppArmor and kernel.* sysctls, which containers
# cannot have (tests/vm/test_vm_hardening.py; -s prints the boot and deploy times); it boots
# fresh and ends with `vm down`
test-vm: venv
	$(BIN)/pytest -s tests/vm $(PYTEST_ARGS)
