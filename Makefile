# svirtd: the two set-up commands are `make demo` and `make test` (as root, Debian 12).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all deps venv demo test unit integration lint install uninstall bench clean policy policy-lint

all: test

deps:
	@scripts/install-deps.sh

# The venv sees Debian's python3-selinux/-libvirt/-audit/-systemd (--system-site-packages);
# pydantic 2, dbus-fast and the dev tools come from PyPI and shadow Debian's older copies.
$(STAMP): pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: deps $(STAMP)

demo: venv
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: venv
	$(VENV)/bin/pytest tests/integration

# The README's test command: lint, type-check, then every test against the real parts.
test: venv lint
	$(VENV)/bin/pytest

# SELinux policy module for svirtd's own domain (refpolicy devel Makefile), and its lint.
policy: deps
	$(MAKE) -C policy -f /usr/share/selinux/devel/Makefile svirtd.pp

policy-lint: deps
	cd policy && selint -s -c selint.conf svirtd.te svirtd.if svirtd.fc

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info policy/tmp policy/*.pp
