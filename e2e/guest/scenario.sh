#!/bin/bash
# The end-to-end scenario, run inside the SELinux-enforcing VM by e2e-test.service (as unconfined_t).
# Prints one "RESULT <name> PASS|FAIL <detail>" line per assertion on the serial console; the host
# (e2e/run.py) fails on any FAIL or missing line. Then it powers the VM off.
set -u
IMAGES=/var/lib/libvirt/images/e2e
AUDIT=/var/log/audit/audit.log

result() {  # result NAME STATUS(0=pass) DETAIL...
    local name=$1 status=$2; shift 2
    if [ "$status" = 0 ]; then echo "RESULT $name PASS $*"; else echo "RESULT $name FAIL $*"; fi
}
wait_for() {  # wait_for SECONDS COMMAND...
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.5; done
}
query() { svirtctl --json query "$1"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$2)" <<<"$1"; }

echo "E2E START $(uname -r)"
result enforcing "$([ "$(getenforce)" = Enforcing ]; echo $?)" "$(getenforce)"
wait_for 120 systemctl is-active --quiet svirtd.service
wait_for 120 systemctl is-active --quiet libvirtd.service
svirtd_label=$(ps -eo label,comm | awk '$2 == "svirtd" {print $1; exit}')
result svirtd_domain "$([[ $svirtd_label == *:svirtd_t:* ]]; echo $?)" "$svirtd_label"

setsebool virt_use_execmem 1   # TCG translates code at run time

mkdir -p $IMAGES
for g in e2e-a e2e-b; do
    head -c 1048576 /dev/zero > $IMAGES/$g.img
    printf '\xfa\xf4\xeb\xfd' | dd of=$IMAGES/$g.img conv=notrunc status=none
    printf '\x55\xaa' | dd of=$IMAGES/$g.img bs=1 seek=510 conv=notrunc status=none
done
restorecon -R $IMAGES
original=$(getfattr --only-values -n security.selinux $IMAGES/e2e-a.img | tr -d '\0')
echo "original image label: $original"
for g in e2e-a e2e-b; do
    cat > /tmp/$g.xml <<XML
<domain type='qemu'><name>$g</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>
    <source file='$IMAGES/$g.img'/><target dev='vda' bus='virtio'/></disk>
    <video><model type='none'/></video><memballoon model='none'/></devices></domain>
XML
    virsh define /tmp/$g.xml
done

labeled() { [ "$(field "$(query "$1")" '["resources"][0]["status"]')" = labeled ]; }
wait_for 30 labeled e2e-a && wait_for 30 labeled e2e-b
qa=$(query e2e-a); qb=$(query e2e-b)
label_a=$(field "$qa" '["label"]'); label_b=$(field "$qb" '["label"]')
image_b=$(field "$qb" '["image_label"]')
disk_b=$(getfattr --only-values -n security.selinux $IMAGES/e2e-b.img | tr -d '\0')
result labeled "$([ "$disk_b" = "$image_b" ] && [ "$label_a" != "$label_b" ]; echo $?)" "a=$label_a b=$label_b disk_b=$disk_b"

wait_for 30 bash -c "virsh dumpxml --inactive e2e-a | grep -q \"<label>$label_a</label>\""
seclabel=$(virsh dumpxml --inactive e2e-a | tr -d '\n' | grep -o "<seclabel type='static' model='selinux' relabel='no'>[^/]*<label>[^<]*</label>" | head -1)
result static_seclabel "$([[ $seclabel == *"<label>$label_a</label>"* ]]; echo $?)" "$seclabel"

virsh start e2e-a && virsh start e2e-b
result started "$(virsh domstate e2e-a | grep -q running && virsh domstate e2e-b | grep -q running; echo $?)" \
    "$(virsh domstate e2e-a) $(virsh domstate e2e-b)"
for g in e2e-a e2e-b; do
    pid=$(cat /run/libvirt/qemu/$g.pid 2>/dev/null)
    actual=$([ -n "$pid" ] && ps -o label= -p "$pid")
    want=$([ $g = e2e-a ] && echo "$label_a" || echo "$label_b")
    result "qemu_label_${g#e2e-}" "$([ -n "$want" ] && [ "$actual" = "$want" ]; echo $?)" "ps -Z: $actual query: $want"
done

# Guest a's qemu asked to open guest b's disk, and its own (control).
cross=$(virsh qemu-monitor-command e2e-a '{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"evil","filename":"'$IMAGES'/e2e-b.img","locking":"off","read-only":true}}' 2>&1)
result cross_guest_open_denied "$([[ $cross == *"Permission denied"* ]]; echo $?)" "$cross"
own=$(virsh qemu-monitor-command e2e-a '{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"mine","filename":"'$IMAGES'/e2e-a.img","locking":"off","read-only":true}}' 2>&1)
result own_disk_open_allowed "$([[ $own == *'"return":{}'* ]]; echo $?)" "$own"

level_a=${label_a#*:*:*:}; level_b=${image_b#*:*:*:}
kernel_avc() { [ -n "$label_a" ] && [ -n "$image_b" ] && grep "avc:  denied" $AUDIT | grep "scontext=$label_a " | grep -q "tcontext=$image_b "; }
wait_for 10 kernel_avc
result kernel_avc "$(kernel_avc; echo $?)" "$(grep "scontext=$label_a" $AUDIT | grep "tcontext=$image_b" | head -1)"
attributed() {
    svirtctl --json query e2e-a | python3 -c '
import json, sys
d = json.load(sys.stdin)["denials"]
sys.exit(0 if any(x["source_name"] == "e2e-a" and x["target_name"] == "e2e-b" and "MCS isolation" in x["explanation"] for x in d) else 1)'
}
wait_for 10 attributed
result denial_attributed "$(attributed; echo $?)" "$(svirtctl --json query e2e-a | python3 -c 'import json,sys; d=json.load(sys.stdin)["denials"]; print(d[-1]["explanation"] if d else "none")')"

journal=$(journalctl -o json --no-pager GUEST_NAME=e2e-a | grep -c '"AVC_TCONTEXT"')
result journal_fields "$([ "$journal" -gt 0 ]; echo $?)" "$journal journal entries with GUEST_NAME=e2e-a and AVC_* fields"

svirtctl verify > /tmp/verify.txt; status=$?
result verify_ok "$status" "$(tr '\n' ' ' < /tmp/verify.txt)"

virsh destroy e2e-a; virsh destroy e2e-b
virsh undefine e2e-a; virsh undefine e2e-b
restored() { [ "$(getfattr --only-values -n security.selinux $IMAGES/e2e-b.img | tr -d '\0')" = "$original" ]; }
wait_for 10 restored
result labels_restored "$([ "$disk_b" = "$image_b" ] && [ -n "$image_b" ] && restored; echo $?)" "$(getfattr --only-values -n security.selinux $IMAGES/e2e-b.img | tr -d '\0') (original $original)"

svirtd_denials=$(grep "avc:  denied" $AUDIT | grep -c "scontext=system_u:system_r:svirtd_t")
result no_svirtd_denials "$([ "$svirtd_denials" = 0 ]; echo $?)" "$svirtd_denials"
echo "--- AVC denials of svirtd_t (type class { perms } comm), deduplicated, for the policy:"
grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:svirtd_t" |
    sed -E 's/.*denied  \{ ([^}]*) \}.*comm="([^"]*)".*tcontext=[^:]*:[^:]*:([^:]*):[^ ]* tclass=([^ ]*).*/DENIAL \3 \4 { \1} comm=\2/' |
    sort | uniq -c | sort -rn
echo "--- other AVC denials (first 20):"
grep "avc:  denied" $AUDIT | grep -v "scontext=system_u:system_r:svirtd_t" | head -20
echo "--- svirtd journal:"
journalctl -u svirtd --no-pager | tail -30
echo "E2E DONE"
