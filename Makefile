# svirtd: the two set-up commands are `make demo` and `make test` (as root, Debian 12).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all deps venv demo test unit integration lint install install-files uninstall uninstall-legacy bench clean policy \
	policy-lint e2e vendor man deb soak

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
policy: deps policy/svirtd.pp

policy-lint: deps
	cd policy && selint -F -s -c selint.conf svirtd.te svirtd.if svirtd.fc

# -- installing and packaging ---------------------------------------------------------------------
# One FHS layout for `make install` and the .deb (debian/rules stages the package with `make
# install-files DESTDIR=debian/tmp`). svirtd and the Python packages Debian 12 has too old (pydantic 2,
# dbus-fast) live in a private path; the rest (libvirt, SELinux, audit, setools, systemd bindings) are
# Debian's python3-* modules. Nothing installed names DESTDIR or this checkout.
LIBDIR     := /usr/lib/svirtd
PYDIR      := $(LIBDIR)/python
LIBEXECDIR := /usr/libexec/svirtd
UNITDIR    := /usr/lib/systemd/system
DOCDIR     := /usr/share/doc/svirtd
VENDOR     := .cache/vendor
MANPAGES   := $(patsubst man/%.scd,build/man/%,$(wildcard man/*.scd))
PIP_OFFLINE := /usr/bin/python3 -m pip install --isolated --no-index --find-links $(VENDOR) --no-deps \
	--no-compile --root-user-action=ignore --disable-pip-version-check -q

# The pinned wheels (vendor-requirements.txt, with hashes), downloaded again only when the pins change;
# the only step with network.
vendor: $(VENDOR)/.complete

$(VENDOR)/.complete: vendor-requirements.txt | venv
	rm -rf $(VENDOR).new
	$(PY) -m pip download -q --only-binary=:all: --no-deps -d $(VENDOR).new -r vendor-requirements.txt
	touch $(VENDOR).new/.complete
	rm -rf $(VENDOR) && mv $(VENDOR).new $(VENDOR)

man: $(MANPAGES)

build/man/%: man/%.scd
	@command -v scdoc >/dev/null || { echo "scdoc is missing: apt-get install scdoc (or make deps)"; exit 1; }
	@mkdir -p build/man
	scdoc < $< > $@

policy/svirtd.pp: policy/svirtd.te policy/svirtd.if policy/svirtd.fc
	$(MAKE) -C policy -f /usr/share/selinux/devel/Makefile svirtd.pp

# Install on this host (as root), or stage under DESTDIR: the same files the .deb ships. On the live
# host (no DESTDIR) it also loads the policy module and tells systemd about the units.
install: policy/svirtd.pp man install-files
	@if [ -z "$(DESTDIR)" ]; then \
	  if command -v semodule >/dev/null && semodule -l >/dev/null 2>&1; then \
	    semodule -X 200 -i /usr/share/selinux/packages/svirtd.pp || exit 1; \
	    restorecon -R /usr/sbin/svirtd /usr/libexec/svirtd /etc/svirt /var/lib/svirtd /run/svirtd 2>/dev/null || true; \
	  else echo "SELinux tools absent or no policy store: the svirtd policy module is not loaded"; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	  if command -v journalctl >/dev/null; then journalctl --update-catalog 2>/dev/null || true; fi; \
	  if [ -e /etc/systemd/system/svirtd.service ]; then \
	    echo "NOTE: /etc/systemd/system/svirtd.service (an older make install) overrides $(UNITDIR): make uninstall-legacy"; fi; \
	  echo "Installed. Now: systemctl enable --now svirtd.service (it brings its audit socket), and restart libvirtd once (it discovers hooks at start)."; \
	fi

# The copying half of install: needs policy/svirtd.pp, the man pages and the vendored wheels, never the network.
install-files:
	@test -n "$$(ls $(VENDOR)/*.whl 2>/dev/null)" || { echo "$(VENDOR) has no wheels: run make vendor first"; exit 1; }
	@test -f policy/svirtd.pp || { echo "policy/svirtd.pp is missing: run make policy first"; exit 1; }
	@test -n "$(MANPAGES)" && for m in $(MANPAGES); do test -f $$m || { echo "$$m is missing: run make man first"; exit 1; }; done
	rm -rf $(DESTDIR)$(PYDIR)
	$(PIP_OFFLINE) --target $(DESTDIR)$(PYDIR) -r vendor-requirements.txt
	install -d $(DESTDIR)$(PYDIR)/svirtd
	install -m 0644 svirtd/*.py $(DESTDIR)$(PYDIR)/svirtd/
	install -d $(DESTDIR)/usr/sbin $(DESTDIR)/usr/bin
	sed -e 's|@NAME@|svirtd|' -e 's|@PYDIR@|$(PYDIR)|' -e 's|@MODULE@|svirtd.service|' data/bin/entry-point.in > $(DESTDIR)/usr/sbin/svirtd
	sed -e 's|@NAME@|svirtctl|' -e 's|@PYDIR@|$(PYDIR)|' -e 's|@MODULE@|svirtd.ctl|' data/bin/entry-point.in > $(DESTDIR)/usr/bin/svirtctl
	chmod 0755 $(DESTDIR)/usr/sbin/svirtd $(DESTDIR)/usr/bin/svirtctl
	install -D -m 0644 data/org.svirt.Manager.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.svirt.Manager.conf
	install -D -m 0644 data/org.svirt.Manager.service $(DESTDIR)/usr/share/dbus-1/system-services/org.svirt.Manager.service
	install -D -m 0644 data/org.svirt.Manager.policy $(DESTDIR)/usr/share/polkit-1/actions/org.svirt.Manager.policy
	install -D -m 0644 systemd/svirtd.service $(DESTDIR)$(UNITDIR)/svirtd.service
	install -D -m 0644 systemd/svirtd-audit.socket $(DESTDIR)$(UNITDIR)/svirtd-audit.socket
# The hook is code that must match the daemon (its D-Bus calls), not configuration: it lives under
# /usr and libvirt finds it through a link in the only directory it reads hooks from.
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)/etc/libvirt/hooks/qemu.d
	sed 's|@HOOK_ENV@|/run/svirtd/hook.env|' data/libvirt/svirtd-hook.sh > $(DESTDIR)$(LIBEXECDIR)/libvirt-hook
	chmod 0755 $(DESTDIR)$(LIBEXECDIR)/libvirt-hook
	ln -sfn $(LIBEXECDIR)/libvirt-hook $(DESTDIR)/etc/libvirt/hooks/qemu.d/svirtd
	test -e $(DESTDIR)/etc/svirt/svirtd.conf || install -D -m 0644 data/svirtd.conf $(DESTDIR)/etc/svirt/svirtd.conf
	install -D -m 0644 policy/svirtd.pp $(DESTDIR)/usr/share/selinux/packages/svirtd.pp
	install -D -m 0644 policy/svirtd.if $(DESTDIR)/usr/share/selinux/devel/include/contrib/svirtd.if
	install -D -m 0644 data/polkit/50-svirtd-delegate.rules.example $(DESTDIR)$(DOCDIR)/examples/50-svirtd-delegate.rules.example
	install -D -m 0644 docs/dbus-api.md $(DESTDIR)$(DOCDIR)/dbus-api.md
	install -D -m 0644 docs/architecture.md $(DESTDIR)$(DOCDIR)/architecture.md
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	for m in $(MANPAGES); do s=$${m##*.}; install -D -m 0644 $$m $(DESTDIR)/usr/share/man/man$$s/$${m##*/}; done
	install -D -m 0644 data/svirtd.catalog $(DESTDIR)/usr/lib/systemd/catalog/svirtd.catalog
	install -D -m 0644 data/completion/svirtctl.bash $(DESTDIR)/usr/share/bash-completion/completions/svirtctl
	install -D -m 0644 -t $(DESTDIR)/usr/share/dbus-1/interfaces data/interfaces/org.svirt.Manager1.xml \
	  data/interfaces/org.svirt.Guest1.xml data/interfaces/org.svirt.Job1.xml
# The Cockpit page (cockpit-ws finds packages in /usr/share/cockpit).
	install -D -m 0644 -t $(DESTDIR)/usr/share/cockpit/svirt cockpit/manifest.json cockpit/index.html \
	  cockpit/svirt.js cockpit/svirt.css

# Removes what install put there (and the module); keeps the config and the table.
uninstall:
	rm -rf $(LIBDIR) $(LIBEXECDIR)
	rm -f /usr/sbin/svirtd /usr/bin/svirtctl /etc/libvirt/hooks/qemu.d/svirtd
	rm -f /usr/share/dbus-1/system.d/org.svirt.Manager.conf /usr/share/dbus-1/system-services/org.svirt.Manager.service
	rm -f /usr/share/polkit-1/actions/org.svirt.Manager.policy $(UNITDIR)/svirtd.service $(UNITDIR)/svirtd-audit.socket
	rm -f /usr/share/selinux/packages/svirtd.pp /usr/share/selinux/devel/include/contrib/svirtd.if
	rm -f /usr/lib/systemd/catalog/svirtd.catalog /usr/share/bash-completion/completions/svirtctl
	rm -f /usr/share/dbus-1/interfaces/org.svirt.Manager1.xml /usr/share/dbus-1/interfaces/org.svirt.Guest1.xml /usr/share/dbus-1/interfaces/org.svirt.Job1.xml
	rm -rf /usr/share/cockpit/svirt
	for m in $(MANPAGES); do rm -f /usr/share/man/man$${m##*.}/$${m##*/}; done
	rm -rf $(DOCDIR)
	-semodule -X 200 -r svirtd
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "Kept: /etc/svirt (config) and /var/lib/svirtd (the table). Release guests first to restore their labels."

# What the make install of svirtd 0.1 (a venv in /opt/svirtd, units in /etc) left; its units would
# override the ones in $(UNITDIR).
uninstall-legacy:
	rm -rf /opt/svirtd
	rm -f /usr/local/sbin/svirtd /usr/local/bin/svirtctl /etc/systemd/system/svirtd.service /etc/systemd/system/svirtd-audit.socket
	-semodule -r svirtd

# Debian packages svirtd and svirtd-selinux in dist/, built with the vendored wheels (no network) from
# a copy of what they are made of (dpkg-buildpackage writes next to the source directory; no git needed).
# e2e/image.py keys its image on the same list (DEB_INPUTS).
DEB_BUILD   := build/deb
DEB_SOURCES := svirtd policy data systemd man debian docs cockpit README.md Makefile vendor-requirements.txt .cache/vendor
deb:
	@test -n "$$(ls $(VENDOR)/*.whl 2>/dev/null)" || { echo "$(VENDOR) has no wheels: run make vendor first"; exit 1; }
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src dist
	tar -cf - --exclude=__pycache__ --exclude='*.pyc' --exclude=policy/tmp --exclude='policy/*.pp' \
	  --exclude='policy/*.fc.tmp' $(DEB_SOURCES) | tar -C $(DEB_BUILD)/src -xf -
	cd $(DEB_BUILD)/src && dpkg-buildpackage -b -us -uc -rfakeroot >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	rm -f dist/svirtd_*.deb dist/svirtd-selinux_*.deb dist/svirtd_*.buildinfo dist/svirtd_*.changes
	mv $(DEB_BUILD)/*.deb $(DEB_BUILD)/*.buildinfo $(DEB_BUILD)/*.changes dist/
	@ls -l dist/

# End to end on a real SELinux-enforcing kernel (a Debian 12 VM under TCG): builds or reuses the image
# (cached in .cache/e2e, keyed on its inputs), boots it, prints one RESULT line per assertion.
e2e: venv vendor
	$(VENV)/bin/pytest -m e2e -s tests/e2e

# The soak (issue 19, not part of make test; its short version is): a random workload against the real parts
# while svirtd is SIGKILLed 1,000 times and libvirtd 50, the invariants checked after every restart. The last
# line is one JSON object. Knobs: SOAK_SVIRTD_KILLS, SOAK_LIBVIRTD_KILLS, SOAK_SECONDS, SOAK_SEED,
# SOAK_TREE_FILES, SOAK_TREES, SOAK_GUESTS, SOAK_RUNNING, SOAK_SETTLE (soak/run.py).
soak: venv
	$(PY) -m soak

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info policy/tmp policy/*.pp
