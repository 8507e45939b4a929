#!/bin/sh
# Install the Debian 12 packages svirtd and its tests need, only when something is missing.
# (The SELinux, libvirt, audit and systemd Python bindings come from Debian, not PyPI.)
# The last line is what `make man`, `make deb` and `make install` use (debhelper, scdoc, lintian...).
set -eu
PACKAGES="
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  python3-libvirt python3-selinux python3-semanage python3-audit python3-setools python3-systemd python3-venv
  selinux-policy-default selinux-policy-dev selinux-utils policycoreutils setools selint
  dbus-daemon dbus-bin libglib2.0-bin polkitd systemd
  attr strace btrfs-progs dosfstools iptables ebtables util-linux swtpm swtpm-tools bindfs python3-fusepy debootstrap zstd
  debhelper fakeroot dpkg-dev lintian scdoc man-db python3-pip
  etcd-server etcd-client
"
# The Cockpit page (cockpit/) and its browser test: cockpit-ws + bridge, headless Chromium, selenium.
PACKAGES="$PACKAGES cockpit-ws cockpit-bridge cockpit-system chromium chromium-driver python3-selenium"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
fi
case " $missing " in
  *" etcd-server "*)
    # Where an init system lets it, the package starts a default etcd on localhost:2379. svirtd's tests and
    # bench run their own members on free ports; one we just installed is stopped (under systemd also
    # disabled); the README's three-host section configures it for real.
    if [ -d /run/systemd/system ]; then
      systemctl disable --now etcd.service || true
    else
      invoke-rc.d etcd stop || true
    fi
    ;;
esac
