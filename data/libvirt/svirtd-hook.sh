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
# A non-zero exit aborts the operation, and `virsh start` shows what this prints on stderr. It NEVER
# calls libvirt (libvirtd waits for it: a call back would deadlock). busctl, not Python: it adds
# milliseconds, not a tenth of a second, to every guest start.
#
# The XML goes to svirtd as a file in its root-only spool directory (a command-line argument caps it
# at 128 KiB: a guest with many disks would fail). libvirtd gives hooks a sanitized environment, so
# svirtd writes how to reach it into HOOK_ENV at start (bus address, require_confined). If svirtd is
# unreachable or refuses: with require_confined the start is aborted with a one-line reason; otherwise
# the guest starts, a marker is left, and svirtd reports the guest as running UNCONFINED once it is back.

HOOK_ENV="@HOOK_ENV@"
CONFIG="/etc/svirt/svirtd.conf"

guest="$1"
case "$2/$3" in
    prepare/begin|start/begin|migrate/begin|restore/begin|release/end) ;;
    *) exit 0 ;;
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

call() {
    if [ -n "$SVIRTD_BUS" ]; then
        busctl --address="$SVIRTD_BUS" --timeout=60 call org.svirt.Manager /org/svirt/Manager org.svirt.Manager1 "$@"
    else
        busctl --system --timeout=60 call org.svirt.Manager /org/svirt/Manager org.svirt.Manager1 "$@"
    fi
}

# Every program run here adds to every guest start: shell built-ins where they do the job.
markers="${HOOK_ENV%/*}/unconfined"
spool="${HOOK_ENV%/*}/hook"

if [ "$2" = release ]; then
    cat >/dev/null
    [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    call GuestStopped s "$guest" >/dev/null 2>&1
    exit 0
fi

# libvirt writes the whole XML to our stdin: always read it, even when it cannot be spooled.
spooled="$spool/$$.xml"
if (umask 077 && cat > "$spooled") 2>/dev/null; then
    if [ "$2" = start ] && ! grep -q "model='selinux'" "$spooled" 2>/dev/null; then
        rm -f "$spooled"  # no SELinux label to run in (no SELinux driver here): nothing to check
        exit 0
    fi
    out=$(call HookEvent ss "$2" "$spooled" 2>&1)
    rc=$?
else
    cat >/dev/null
    out="cannot hand the definition to svirtd: $spool is missing or full (svirtd never ran, or /run is full)"
    rc=1
fi
rm -f "$spooled"
if [ "$rc" = 0 ]; then
    case "$out" in
        "bs false "*)
            # svirtd refuses this start whatever require_confined says (e.g. two guests sharing a pair).
            reason=${out#bs false }
            echo "svirtd: not starting $guest: $reason" >&2
            exit 1 ;;
    esac
    if [ -e "$spooled.out" ]; then  # only migrate/restore: a test is a built-in, rm is a process
        [ -s "$spooled.out" ] && cat "$spooled.out"  # the definition to use, with svirtd's label in it
        rm -f "$spooled.out"
    fi
    [ "$2" = prepare ] && [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    exit 0
fi
rm -f "$spooled.out"
reason=$(printf '%s' "$out" | tr '\n' ' ' | sed 's/^Call failed: //')
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
