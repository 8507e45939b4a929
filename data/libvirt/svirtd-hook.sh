#!/bin/sh
# svirtd's libvirt hook, installed as /etc/libvirt/hooks/qemu.d/svirtd (by `make install`).
#
# libvirtd runs it synchronously: on "prepare begin" before qemu exists (a non-zero exit aborts the
# start, and `virsh start` shows what this prints on stderr), on "release end" after qemu is gone.
# It hands the domain XML to svirtd over the system bus and NEVER calls libvirt (libvirtd waits for
# it: a call back would deadlock). busctl, not Python: it adds milliseconds, not a tenth of a second,
# to every guest start.
#
# libvirtd gives hooks a sanitized environment, so svirtd writes how to reach it into HOOK_ENV at
# start (bus address, require_confined). If svirtd is unreachable or refuses: with require_confined the
# start is aborted with a one-line reason; otherwise the guest starts, a marker is left, and svirtd
# reports the guest as running UNCONFINED once it is back.

HOOK_ENV="@HOOK_ENV@"
CONFIG="/etc/svirt/svirtd.conf"

guest="$1"
case "$2/$3" in
    prepare/begin|release/end) ;;
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

if [ "$2" = release ]; then
    cat >/dev/null
    [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    call GuestStopped s "$guest" >/dev/null 2>&1
    exit 0
fi

xml=$(cat)
if out=$(call PrepareStart s "$xml" 2>&1); then
    # Isolated and labeled, or svirtd decided it runs unconfined (and logged why).
    [ -e "$markers/$guest" ] && rm -f "$markers/$guest"
    exit 0
fi
reason=$(printf '%s' "$out" | tr '\n' ' ' | sed 's/^Call failed: //')
if [ "$SVIRTD_REQUIRE_CONFINED" = 1 ]; then
    echo "svirtd: not starting $guest (require_confined = true): $reason" >&2
    exit 1
fi
# svirtd unreachable (or it refused, e.g. a hostile path): start anyway, and leave a marker so svirtd
# reports the guest as running UNCONFINED.
mkdir -p "$markers" 2>/dev/null && date > "$markers/$guest" 2>/dev/null
echo "svirtd: $guest starts UNCONFINED: $reason" >&2
exit 0
