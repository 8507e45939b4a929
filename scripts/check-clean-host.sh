#!/bin/bash
# Did the test run leave anything behind on the host? .ci/run calls it around `make test` / `make e2e`:
#
#   scripts/check-clean-host.sh --before STATE   # what the host had before (mounts, daemons, guests)
#   ... the run ...
#   scripts/check-clean-host.sh --after STATE    # fails (exit 1), listing each leftover, if the run left
#                                                # a mount, a process, a guest, a filter, a hook or a temp dir
#
# The host's own libvirtd (if one ran before) must be the same process afterwards: the suite runs its
# own private libvirtd and never restarts, kills or reconfigures the host's.
set -u
mode=${1:-}
state=${2:-}
if [ -z "$mode" ] || [ -z "$state" ]; then
    echo "usage: $0 --before|--after STATE_FILE" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
# Programs the suite, the demo, the benches and the e2e run start.
WATCHED='^(libvirtd|virtlogd|qemu-system-x86|qemu-system-x86_64|bindfs|dbus-daemon|polkitd|svirtd|zstd|debootstrap|cockpit-ws|cockpit-bridge|chromedriver|chromium|chrome_crashpad|etcd)$'

mounts() { awk '{print $2}' /proc/self/mounts | sort; }
# pid and name of the watched programs that really run (zombies only wait for PID 1 to reap them).
watched() {
    for stat in /proc/[0-9]*/stat; do
        read -r pid rest < "$stat" 2>/dev/null || continue
        name=${rest#(}; name=${name%%)*}
        st=${rest##*) }; st=${st%% *}
        [ "$st" = Z ] && continue
        if [[ $name =~ $WATCHED ]]; then
            echo "$pid $name"
        fi
    done | sort
}
# treewalk helpers and other python children of svirtd show up as python3: match their command line.
helpers() { pgrep -af 'svirtd\.treewalk|testbed\.subreaper' | grep -v pgrep | sort || true; }
host_libvirtd() { [ -r /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null && cat /run/libvirtd.pid; }
# What the suite may create outside pytest's own temp dir; none of it may remain.
leftover_paths() {
    shopt -s nullglob
    for p in /tmp/svt* /tmp/svirtd-* /var/tmp/svirtd-* /dev/shm/svirtd-* /var/lib/libvirt/images/svt* /var/lib/libvirt/images/svirtd-* \
             /run/svirtd-testbed /etc/libvirt/hooks/qemu.d/svirtd-testbed /etc/libvirt/hooks/qemu.d/zz-svirtd-probe \
             /etc/libvirt/nwfilter/svirtd-*.xml /etc/libvirt/qemu/svt*.xml; do
        echo "$p"
    done
}

if [ "$mode" = --before ]; then
    {
        echo "# mounts"; mounts
        echo "# watched"; watched
        echo "# helpers"; helpers
        echo "# libvirtd"; host_libvirtd
        echo "# paths"; leftover_paths
    } > "$state"
    echo "check-clean-host: recorded the host's state in $state"
    exit 0
fi

section() { awk -v s="# $1" '$0 ~ /^# / {on = ($0 == s); next} on' "$state"; }
problems=0
report() { echo "LEFT BEHIND: $*"; problems=$((problems + 1)); }

while read -r m; do report "mount $m"; done < <(comm -13 <(section mounts) <(mounts))
while read -r pid name; do
    section watched | grep -q "^$pid " || report "process $pid $name: $(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null | cut -c1-160)"
done < <(watched)
while read -r line; do report "helper process $line"; done < <(comm -13 <(section helpers) <(helpers))
while read -r p; do report "path $p"; done < <(comm -13 <(section paths | sort) <(leftover_paths | sort))
before_libvirtd=$(section libvirtd)
if [ -n "$before_libvirtd" ]; then
    now=$(host_libvirtd)
    [ "$now" = "$before_libvirtd" ] || report "the host's libvirtd (pid $before_libvirtd) was replaced or stopped (now: ${now:-none})"
    if command -v virsh >/dev/null; then
        while read -r g; do [ -n "$g" ] && report "guest $g on the host's libvirtd"; done \
            < <(virsh -c qemu:///system list --all --name 2>/dev/null | grep -E '^(svt|svirtd-demo|svb-)' || true)
    fi
fi
grep -q " $REPO/.cache" /proc/self/mounts && report "a mount under $REPO/.cache (the e2e image build)"

if [ "$problems" -gt 0 ]; then
    echo "check-clean-host: $problems thing(s) left behind by the run"
    exit 1
fi
echo "check-clean-host: nothing left behind"
