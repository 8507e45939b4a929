#!/bin/sh
# svirtd's libvirt hook, installed as /usr/libexec/svirtd/libvirt-hook and linked from
# /etc/libvirt/hooks/qemu.d/svirtd, the directory libvirt reads hooks from (by the package or `make install`).
#
# libvirtd (or virtqemud) runs it synchronously, with the domain XML on stdin:
#   prepare begin  before qemu exists: svirtd isolates the guest and labels what it labels itself;
#   start begin    the XML now carries the label qemu will run in: svirtd checks it (and adopts it when
#                  the definition did not carry the guest's own label yet); a refusal aborts the start;
#   migrate begin, restore begin
#                  the definition of a guest arriving from another host or a save image: svirtd puts its
#                  label in, and this hook prints the definition libvirt is to use;
#   release end    qemu is gone.
# Every other phase (started, stopped, reconnect, attach...) exits at once: svirtd follows those from
# libvirt's events. A non-zero exit aborts the operation, and `virsh start` shows what this prints on
# stderr. It NEVER calls libvirt (libvirtd waits for it: a call back would deadlock).
#
# Every program run here adds to every guest start (bench/start_overhead.py, hook_phases): shell
# built-ins where they do the job, and per start only `cat` + `dbus-send` at prepare begin and one
# `mawk` at start begin. dbus-send, not busctl: busctl loads systemd's 3 MiB shared library, which
# costs more than everything else here together. No fire-and-forget bus messages: svirtd asks the bus
# who sent each hook call (root only), which it cannot once the sender has exited, and `release end`
# must be recorded before the next `prepare begin` of the guest.
#
# The XML goes to svirtd as a file in its root-only spool directory (a command-line argument caps it
# at 128 KiB: a guest with many disks would fail), one file per guest, overwritten at every phase
# and removed at `release end` (an rm per start otherwise). libvirtd gives hooks a sanitized
# environment, so svirtd writes how to reach it into HOOK_ENV at start (bus address,
# require_confined). If svirtd is unreachable or refuses: with require_confined the start is aborted
# with a one-line reason; otherwise the guest starts, a marker is left, and svirtd reports the guest
# as running UNCONFINED once it is back.

HOOK_ENV="@HOOK_ENV@"
CONFIG="/etc/svirt/svirtd.conf"

guest="$1"
case "$2/$3" in
    prepare/begin|start/begin|migrate/begin|restore/begin|release/end) ;;
    *) exit 0 ;;  # libvirt does not need stdin read (it ignores a hook closing it early)
esac

SVIRTD_BUS=""
SVIRTD_REQUIRE_CONFINED=""
# shellcheck disable=SC1090
[ -r "$HOOK_ENV" ] && . "$HOOK_ENV"
if [ -z "$SVIRTD_REQUIRE_CONFINED" ]; then
    # svirtd never ran here: its configuration decides.
    if grep -Eq '^[[:space:]]*require_confined[[:space:]]*=[[:space:]]*true' "$CONFIG" 2>/dev/null; then
        SVIRTD_REQUIRE_CONFINED=1
    else
        SVIRTD_REQUIRE_CONFINED=0
    fi
fi

# Method calls wait for svirtd's answer (D-Bus activation included) for at most 60 s. Called directly
# (not from a shell function) so that `$(...)` execs dbus-send in its subshell instead of forking again.
bus="--system"
[ -n "$SVIRTD_BUS" ] && bus="--bus=$SVIRTD_BUS"

umask 077
markers="${HOOK_ENV%/*}/unconfined"
spool="${HOOK_ENV%/*}/hook"
spooled="$spool/guest-$guest.xml"  # the "guest-" prefix: svirtd refuses spool names starting with "."

if [ "$2" = release ]; then
    [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    [ -e "$spooled" ] && rm -f "$spooled"
    # Synchronous: a stop svirtd records after the guest's next `prepare begin` would mark it stopped.
    dbus-send "$bus" --print-reply --reply-timeout=60000 --dest=org.svirt.Manager /org/svirt/Manager \
        org.svirt.Manager1.GuestStopped "string:$guest" >/dev/null 2>&1
    exit 0
fi

if [ "$2" = start ]; then
    # One program spools the XML only when it carries an SELinux label (a host with libvirt's SELinux
    # driver); without one there is nothing to check and nothing is written (exit 3).
    mawk -v out="$spooled" '{ xml[NR] = $0 } /model=.selinux./ { labeled = 1 }
        END { if (!labeled) exit 3; for (i = 1; i <= NR; i++) print xml[i] > out; exit close(out) < 0 ? 2 : 0 }'
    spooled_rc=$?
    [ "$spooled_rc" = 3 ] && exit 0
else
    [ -e "$spooled.out" ] && rm -f "$spooled.out"  # left by a hook killed mid-way: never print a stale one
    { cat >"$spooled"; } 2>/dev/null
    spooled_rc=$?
fi
if [ "$spooled_rc" = 0 ]; then
    out=$(dbus-send "$bus" --print-reply --reply-timeout=60000 --dest=org.svirt.Manager /org/svirt/Manager \
        org.svirt.Manager1.HookEvent "string:$2" "string:$spooled" 2>&1)
    rc=$?
else
    cat >/dev/null  # libvirt writes the whole XML: read the rest of it
    out="cannot hand the definition to svirtd: cannot write $spooled (svirtd never ran, or /run is full)"
    rc=1
fi
if [ "$rc" = 0 ]; then
    # dbus-send prints the reply (bs) as `   boolean false` and `   string "REASON"` lines.
    case "$out" in
        *"boolean false"*)
            # svirtd refuses this start whatever require_confined says (e.g. two guests sharing a pair).
            reason=${out#*string \"}
            rm -f "$spooled"
            echo "svirtd: not starting $guest: ${reason%\"}" >&2
            exit 1 ;;
    esac
    if [ -e "$spooled.out" ]; then  # only migrate/restore: a test is a built-in, rm is a process
        [ -s "$spooled.out" ] && cat "$spooled.out"  # the definition to use, with svirtd's label in it
        rm -f "$spooled.out"
    fi
    [ "$2" = prepare ] && [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    exit 0
fi
rm -f "$spooled" "$spooled.out"
# dbus-send: "Error org.svirt.Manager1.Error.NotConfined: REASON" (or the bus's error when unreachable).
reason=$(printf '%s' "$out" | tr '\n' ' ' | sed 's/^Error [^ ]*: //')
if [ "$SVIRTD_REQUIRE_CONFINED" = 1 ]; then
    echo "svirtd: not starting $guest (require_confined = true): $reason" >&2
    exit 1
fi
# svirtd unreachable (or it refused, e.g. a hostile path): start anyway, and leave a marker so svirtd
# reports the guest as running UNCONFINED. A migration or restore goes on with its XML unchanged.
if [ "$2" = prepare ]; then
    mkdir -p "$markers" 2>/dev/null && date > "$markers/$guest" 2>/dev/null
    echo "svirtd: $guest starts UNCONFINED: $reason" >&2
fi
exit 0
