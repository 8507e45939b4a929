# svirtd: the two set-up commands are `make demo` and `make test` (as root, Debian 12).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all deps venv demo test unit integration lint install install-files uninstall bench clean policy policy-lint e2e

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
	cd policy && selint -F -s -c selint.conf svirtd.te svirtd.if svirtd.fc

# Install on this host (as root): a venv in /opt/svirtd, the bus/polkit/systemd/libvirt-hook files, the
# config (kept if present) and the policy module. DESTDIR stages everything under a root instead.
INSTALL_VENV := /opt/svirtd/venv
# What pip installs into that venv; the e2e image passes prebuilt wheels (its chroot has no PyPI).
PIP_INSTALL ?= .
install: deps policy install-files

# The copying half of install, for a prebuilt policy/svirtd.pp (the e2e image runs it in its chroot).
install-files:
	/usr/bin/python3 -m venv --system-site-packages $(DESTDIR)$(INSTALL_VENV)
	$(DESTDIR)$(INSTALL_VENV)/bin/python -m pip install -q $(PIP_INSTALL)
	install -d $(DESTDIR)/usr/local/sbin $(DESTDIR)/usr/local/bin
	ln -sf $(INSTALL_VENV)/bin/svirtd $(DESTDIR)/usr/local/sbin/svirtd
	ln -sf $(INSTALL_VENV)/bin/svirtctl $(DESTDIR)/usr/local/bin/svirtctl
	install -D -m 0644 data/org.svirt.Manager.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.svirt.Manager.conf
	install -D -m 0644 data/org.svirt.Manager.service $(DESTDIR)/usr/share/dbus-1/system-services/org.svirt.Manager.service
	install -D -m 0644 data/org.svirt.Manager.policy $(DESTDIR)/usr/share/polkit-1/actions/org.svirt.Manager.policy
	install -D -m 0644 systemd/svirtd.service $(DESTDIR)/etc/systemd/system/svirtd.service
	install -D -m 0644 systemd/svirtd-audit.socket $(DESTDIR)/etc/systemd/system/svirtd-audit.socket
	install -d -m 0755 $(DESTDIR)/etc/libvirt/hooks/qemu.d
	sed 's|@HOOK_ENV@|/run/svirtd/hook.env|' data/libvirt/svirtd-hook.sh > $(DESTDIR)/etc/libvirt/hooks/qemu.d/svirtd
	chmod 0755 $(DESTDIR)/etc/libvirt/hooks/qemu.d/svirtd
	test -e $(DESTDIR)/etc/svirt/svirtd.conf || install -D -m 0644 data/svirtd.conf $(DESTDIR)/etc/svirt/svirtd.conf
	install -D -m 0644 policy/svirtd.pp $(DESTDIR)/usr/share/selinux/packages/svirtd.pp
	install -D -m 0644 data/polkit/50-svirtd-delegate.rules.example $(DESTDIR)/usr/share/doc/svirtd/50-svirtd-delegate.rules.example
	if [ -z "$(DESTDIR)" ]; then semodule -i policy/svirtd.pp; restorecon -R /opt/svirtd /etc/svirt 2>/dev/null; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	  echo "Installed. Now: systemctl enable --now svirtd-audit.socket svirtd.service, and restart libvirtd once (it discovers hooks at start)."; fi

uninstall:
	rm -f /usr/local/sbin/svirtd /usr/local/bin/svirtctl /etc/libvirt/hooks/qemu.d/svirtd
	rm -f /usr/share/dbus-1/system.d/org.svirt.Manager.conf /usr/share/dbus-1/system-services/org.svirt.Manager.service
	rm -f /usr/share/polkit-1/actions/org.svirt.Manager.policy /etc/systemd/system/svirtd.service
	rm -f /etc/systemd/system/svirtd-audit.socket /usr/share/selinux/packages/svirtd.pp
	-semodule -r svirtd
	rm -rf /opt/svirtd
	@echo "Kept: /etc/svirt (config) and /var/lib/svirtd (the table). Release guests first to restore their labels."

# End to end on a real SELinux-enforcing kernel (a Debian 12 VM under TCG): builds or reuses the image
# (cached in .cache/e2e, keyed on its inputs), boots it, prints one RESULT line per assertion.
e2e: venv policy
	$(VENV)/bin/pytest -m e2e -s tests/e2e

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info policy/tmp policy/*.pp
