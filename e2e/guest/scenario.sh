#!/bin/bash
# The end-to-end scenario, run inside the SELinux-enforcing VM by e2e-test.service (as unconfined_t).
# Prints one "RESULT <name> PASS|FAIL <detail>" line per assertion on the serial console; the host
# (e2e/run.py) fails on any FAIL or missing line. Then it powers the VM off.
#
# libvirt's SELinux driver is active here: svirtd writes <seclabel type='static' relabel='yes'> with
# each guest's pair and libvirt labels the guest's files with it when qemu starts and at runtime
# (hotplug, snapshots, block jobs, the backing chain it probes); svirtd labels directory trees.
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
label_of() { getfattr --only-values -n security.selinux "$1" 2>/dev/null | tr -d '\0'; }
qemu_label() { local pid; pid=$(cat "/run/libvirt/qemu/$1.pid" 2>/dev/null) && ps -o label= -p "$pid"; }
level() { echo "${1#*:*:*:}"; }
qmp_open() {  # qmp_open GUEST FILE NODE: ask GUEST's qemu to open FILE (read-only)
    virsh qemu-monitor-command "$1" '{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"'"$3"'","filename":"'"$2"'","locking":"off","read-only":true}}' 2>&1
}
make_disk() {  # a 1 MiB raw disk whose boot sector halts
    head -c 1048576 /dev/zero > "$1"
    printf '\xfa\xf4\xeb\xfd' | dd of="$1" conv=notrunc status=none
    printf '\x55\xaa' | dd of="$1" bs=1 seek=510 conv=notrunc status=none
}
domain() {  # domain NAME DISKS_XML [EXTRA_DEVICES]
    cat <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>$2<controller type='scsi' model='virtio-scsi'/>
    <video><model type='none'/></video><memballoon model='none'/>${3:-}</devices></domain>
XML
}
raw_disk() { echo "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$1'/><target dev='$2' bus='virtio'/></disk>"; }

echo "E2E START $(uname -r)"
result enforcing "$([ "$(getenforce)" = Enforcing ]; echo $?)" "$(getenforce)"
wait_for 120 systemctl is-active --quiet svirtd.service
wait_for 120 systemctl is-active --quiet libvirtd.service
svirtd_label=$(ps -eo label,comm | awk '$2 == "svirtd" {print $1; exit}')
result svirtd_domain "$([[ $svirtd_label == *:svirtd_t:* ]]; echo $?)" "$svirtd_label"

setsebool virt_use_execmem 1   # TCG translates code at run time

mkdir -p $IMAGES
for g in e2e-a e2e-b; do make_disk $IMAGES/$g.img; done
restorecon -R $IMAGES
original=$(label_of $IMAGES/e2e-a.img)
echo "original image label: $original"
for g in e2e-a e2e-b; do
    domain $g "$(raw_disk $IMAGES/$g.img vda)" > /tmp/$g.xml
    virsh define /tmp/$g.xml
done

isolated() { [ -n "$(field "$(query "$1")" '["level"]')" ]; }
wait_for 30 isolated e2e-a && wait_for 30 isolated e2e-b
qa=$(query e2e-a); qb=$(query e2e-b)
label_a=$(field "$qa" '["label"]'); label_b=$(field "$qb" '["label"]')
image_a=$(field "$qa" '["image_label"]'); image_b=$(field "$qb" '["image_label"]')

wait_for 30 bash -c "virsh dumpxml --inactive e2e-a | grep -q \"<label>$label_a</label>\""
seclabel=$(virsh dumpxml --inactive e2e-a | tr -d '\n' | grep -o "<seclabel type='static' model='selinux' relabel='yes'>[^/]*<label>[^<]*</label>" | head -1)
result static_seclabel "$([[ $seclabel == *"<label>$label_a</label>"* ]]; echo $?)" "$seclabel"

virsh start e2e-a && virsh start e2e-b
result started "$(virsh domstate e2e-a | grep -q running && virsh domstate e2e-b | grep -q running; echo $?)" \
    "$(virsh domstate e2e-a) $(virsh domstate e2e-b)"
# libvirt labeled each disk with the pair svirtd handed out, when qemu started.
disk_b=$(label_of $IMAGES/e2e-b.img)
result labeled "$([ "$disk_b" = "$image_b" ] && [ "$(label_of $IMAGES/e2e-a.img)" = "$image_a" ] && [ "$label_a" != "$label_b" ]; echo $?)" \
    "a=$label_a b=$label_b disk_b=$disk_b"
for g in e2e-a e2e-b; do
    actual=$(qemu_label $g)
    want=$([ $g = e2e-a ] && echo "$label_a" || echo "$label_b")
    result "qemu_label_${g#e2e-}" "$([ -n "$want" ] && [ "$actual" = "$want" ]; echo $?)" "ps -Z: $actual query: $want"
done

# Guest a's qemu asked to open guest b's disk, and its own (control).
cross=$(qmp_open e2e-a $IMAGES/e2e-b.img evil)
result cross_guest_open_denied "$([[ $cross == *"Permission denied"* ]]; echo $?)" "$cross"
own=$(qmp_open e2e-a $IMAGES/e2e-a.img mine)
result own_disk_open_allowed "$([[ $own == *'"return":{}'* ]]; echo $?)" "$own"
virsh qemu-monitor-command e2e-a '{"execute":"blockdev-del","arguments":{"node-name":"mine"}}' >/dev/null 2>&1

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

# journalctl -x explains the cross-guest denial with svirtd's catalog (installed by the .deb).
DENIAL_ID=2ac25ca5ca0e4907ac2939b4164d901c   # svirtd/message_ids.py DENIAL_CROSS_GUEST
journalctl --update-catalog
explained() { journalctl -x --no-pager MESSAGE_ID=$DENIAL_ID GUEST_NAME=e2e-a; }
catalogued() { [[ $(explained) == *"Subject: Guest e2e-a was denied access to guest e2e-b"* ]] && [[ $(explained) == *"MCS isolation at work"* ]]; }
wait_for 10 catalogued
result journal_catalog "$(catalogued; echo $?)" "$(explained | grep -m1 'Subject: ')"

svirtctl verify > /tmp/verify.txt; status=$?
result verify_ok "$status" "$(tr '\n' ' ' < /tmp/verify.txt)"

# --- confinement while guests run (issue 12) -------------------------------------------------------
# Hotplug into running a: the new disk gets a's pair, b's qemu is denied it; unplug restores it.
make_disk $IMAGES/hot.img; restorecon $IMAGES/hot.img
hot_before=$(label_of $IMAGES/hot.img)
attach=$(virsh attach-disk e2e-a $IMAGES/hot.img sdb --targetbus scsi --live 2>&1); attach_rc=$?
hot=$(label_of $IMAGES/hot.img)
hot_cross=$(qmp_open e2e-b $IMAGES/hot.img hotevil)
result hotplug_disk "$([ $attach_rc = 0 ] && [ "$hot" = "$image_a" ] && [[ $hot_cross == *"Permission denied"* ]]; echo $?)" \
    "attach rc=$attach_rc label=$hot (a: $image_a); b opening it: $hot_cross"
detach=$(virsh detach-disk e2e-a sdb --live 2>&1); detach_rc=$?
unplugged() { [ "$(label_of $IMAGES/hot.img)" = "$hot_before" ]; }
wait_for 20 unplugged
result hotunplug_restored "$([ $detach_rc = 0 ] && unplugged; echo $?)" \
    "detach rc=$detach_rc label=$(label_of $IMAGES/hot.img) (before: $hot_before) $detach"

# External disk-only snapshot of running a: the overlay is a's; the old top, now only read by a, keeps
# a's pair (libvirt leaves it so: read-only content would let every guest read a's data), and b's qemu
# is denied both.
snap=$(virsh snapshot-create-as e2e-a s1 --disk-only --atomic --no-metadata --diskspec vda,file=$IMAGES/a-ov.qcow2 2>&1); snap_rc=$?
ov=$(label_of $IMAGES/a-ov.qcow2); old_top=$(label_of $IMAGES/e2e-a.img)
ov_cross=$(qmp_open e2e-b $IMAGES/a-ov.qcow2 ovevil); top_cross=$(qmp_open e2e-b $IMAGES/e2e-a.img topevil)
result snapshot_overlay "$([ $snap_rc = 0 ] && [ "$ov" = "$image_a" ] && [ "$old_top" = "$image_a" ] && [[ $ov_cross == *"Permission denied"* ]] && [[ $top_cross == *"Permission denied"* ]]; echo $?)" \
    "rc=$snap_rc overlay=$ov old top=$old_top; b opening them: $ov_cross / $top_cross $snap"
commit=$(virsh blockcommit e2e-a vda --active --pivot --wait 2>&1); commit_rc=$?
result blockcommit "$([ $commit_rc = 0 ] && virsh domstate e2e-a | grep -q running; echo $?)" \
    "rc=$commit_rc top=$(label_of $IMAGES/e2e-a.img) $commit"

# An admin's restorecon -R over the images while a runs resets its disk's type (the level stays; the
# policy has no customizable svirt_image_t): a's qemu would lose its own disk. svirtd's rescan of running
# guests (rescan_seconds, 30 s) puts a's label back and a's qemu opens its disk again.
restorecon -R $IMAGES
reset=$(label_of $IMAGES/e2e-a.img)
repaired() { [ "$(label_of $IMAGES/e2e-a.img)" = "$image_a" ]; }
wait_for 45 repaired
own_again=$(qmp_open e2e-a $IMAGES/e2e-a.img ownagain)
result restorecon_repaired "$(repaired && [[ $reset == *:virt_image_t:* ]] && [[ $own_again == *'"return":{}'* ]]; echo $?)" \
    "after restorecon: $reset; now $(label_of $IMAGES/e2e-a.img); a opens it: $own_again; $(journalctl -u svirtd --no-pager -o cat MESSAGE_ID=0bc9f33c648c4fa784d657a69eec2d4f | head -2 | tr '\n' ' ')"

# A qcow2 guest whose backing file is NOT in its definition: libvirt probes the chain and labels it.
make_disk $IMAGES/base.img
qemu-img create -q -f qcow2 -b base.img -F raw $IMAGES/c-top.qcow2
restorecon $IMAGES/base.img $IMAGES/c-top.qcow2
domain e2e-c "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$IMAGES/c-top.qcow2'/><target dev='vda' bus='virtio'/></disk>" > /tmp/e2e-c.xml
virsh define /tmp/e2e-c.xml >/dev/null
wait_for 30 isolated e2e-c
cstart=$(virsh start e2e-c 2>&1); cstart_rc=$?
result backing_chain_unlisted "$([ $cstart_rc = 0 ] && [[ $(label_of $IMAGES/base.img) == *:virt_content_t:* ]]; echo $?)" \
    "start rc=$cstart_rc base=$(label_of $IMAGES/base.img) top=$(label_of $IMAGES/c-top.qcow2) $cstart"
virsh destroy e2e-c >/dev/null 2>&1

# For scale: a plain start of a defined guest in this nested TCG VM.
t0=$(date +%s%N); virsh start e2e-c >/dev/null 2>&1; t1=$(date +%s%N); virsh destroy e2e-c >/dev/null 2>&1
echo "plain virsh start here: $(( (t1 - t0) / 1000000 )) ms"

# Define and start at once, as virt-install does: process, table and disk agree.
make_disk $IMAGES/e2e-d.img; restorecon $IMAGES/e2e-d.img
domain e2e-d "$(raw_disk $IMAGES/e2e-d.img vda)" > /tmp/e2e-d.xml
t0=$(date +%s%N)
virsh "define /tmp/e2e-d.xml; start e2e-d" >/dev/null 2>&1
t1=$(date +%s%N)
wait_for 30 isolated e2e-d
sleep 1   # let svirtd settle (it may adopt the label libvirt started the guest with)
qd=$(query e2e-d); ps_d=$(qemu_label e2e-d)
result define_then_start "$([ -n "$ps_d" ] && [ "$ps_d" = "$(field "$qd" '["label"]')" ] && [ "$(level "$(label_of $IMAGES/e2e-d.img)")" = "$(level "$ps_d")" ]; echo $?)" \
    "define+start $(( (t1 - t0) / 1000000 )) ms; ps -Z $ps_d; query $(field "$qd" '["label"]'); disk $(label_of $IMAGES/e2e-d.img)"
virsh destroy e2e-d >/dev/null 2>&1

# A transient guest (virsh create): confined with a pair recorded in svirtd's table; destroy releases it.
make_disk $IMAGES/e2e-t.img; restorecon $IMAGES/e2e-t.img
domain e2e-t "$(raw_disk $IMAGES/e2e-t.img vda)" > /tmp/e2e-t.xml
tcreate=$(virsh create /tmp/e2e-t.xml 2>&1); tcreate_rc=$?
wait_for 30 isolated e2e-t
qt=$(query e2e-t 2>/dev/null); ps_t=$(qemu_label e2e-t)
in_table=$(svirtctl --json list 2>/dev/null | grep -c e2e-t)
virsh destroy e2e-t >/dev/null 2>&1
released() { ! svirtctl --json list | grep -q e2e-t; }
wait_for 20 released
result transient_guest "$([ $tcreate_rc = 0 ] && [ -n "$ps_t" ] && [ "$ps_t" = "$(field "$qt" '["label"]')" ] && [ "$in_table" -gt 0 ] && released; echo $?)" \
    "create rc=$tcreate_rc ps -Z $ps_t query $(field "$qt" '["label"]' 2>/dev/null) in table: $in_table; released after destroy: $(released && echo yes || echo no) $tcreate"

# Save and restore a fresh guest (a went through QMP opens and block jobs behind libvirt's back):
# the same label, and the guest runs again.
make_disk $IMAGES/e2e-s.img; restorecon $IMAGES/e2e-s.img
domain e2e-s "$(raw_disk $IMAGES/e2e-s.img vda)" > /tmp/e2e-s.xml
virsh define /tmp/e2e-s.xml >/dev/null
wait_for 30 isolated e2e-s
label_s=$(field "$(query e2e-s)" '["label"]')
virsh start e2e-s >/dev/null 2>&1
before_save=$(qemu_label e2e-s)
save=$(virsh save e2e-s $IMAGES/s.save 2>&1); save_rc=$?
restore=$(virsh restore $IMAGES/s.save 2>&1); restore_rc=$?
after_restore=$(qemu_label e2e-s)
result save_restore "$([ $save_rc = 0 ] && [ $restore_rc = 0 ] && [ -n "$label_s" ] && [ "$before_save" = "$label_s" ] && [ "$after_restore" = "$label_s" ] && virsh domstate e2e-s | grep -q running; echo $?)" \
    "save rc=$save_rc restore rc=$restore_rc query $label_s before $before_save after $after_restore $save $restore"
if [ $save_rc != 0 ]; then
    echo "--- qemu log of e2e-s (save failed):"; tail -8 /var/log/libvirt/qemu/e2e-s.log
fi
virsh destroy e2e-s >/dev/null 2>&1

# A directory tree shared with a guest (9p): libvirt does not label trees, svirtd does, with the pair.
mkdir -p $IMAGES/share-f/sub; echo data > $IMAGES/share-f/sub/file; make_disk $IMAGES/e2e-f.img; restorecon -R $IMAGES/share-f $IMAGES/e2e-f.img
domain e2e-f "$(raw_disk $IMAGES/e2e-f.img vda)" "<filesystem type='mount' accessmode='mapped'><source dir='$IMAGES/share-f'/><target dir='share'/></filesystem>" > /tmp/e2e-f.xml
virsh define /tmp/e2e-f.xml >/dev/null
wait_for 30 isolated e2e-f
image_f=$(field "$(query e2e-f)" '["image_label"]')
fstart=$(virsh start e2e-f 2>&1); fstart_rc=$?
off=$(find $IMAGES/share-f | while read -r p; do [ "$(label_of "$p")" = "$image_f" ] || echo "$p"; done | wc -l)
result tree_labeled "$([ $fstart_rc = 0 ] && [ -n "$image_f" ] && [ "$off" = 0 ]; echo $?)" \
    "start rc=$fstart_rc; $off entries of share-f not at $image_f $fstart"
virsh destroy e2e-f >/dev/null 2>&1

# A disk the definition marks <seclabel relabel='no'>: nobody relabels it.
make_disk $IMAGES/e2e-n.img; make_disk $IMAGES/keep.img; restorecon $IMAGES/e2e-n.img $IMAGES/keep.img
chcon -t svirt_image_t -l s0 $IMAGES/keep.img   # shared: any guest may use it, as the admin decided
keep_before=$(label_of $IMAGES/keep.img)
domain e2e-n "$(raw_disk $IMAGES/e2e-n.img vda)<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$IMAGES/keep.img'><seclabel model='selinux' relabel='no'/></source><target dev='vdb' bus='virtio'/></disk>" > /tmp/e2e-n.xml
virsh define /tmp/e2e-n.xml >/dev/null
wait_for 30 isolated e2e-n
nstart=$(virsh start e2e-n 2>&1); nstart_rc=$?
result per_disk_norelabel "$([ $nstart_rc = 0 ] && [ "$(label_of $IMAGES/keep.img)" = "$keep_before" ]; echo $?)" \
    "start rc=$nstart_rc keep.img $(label_of $IMAGES/keep.img) (before $keep_before) $nstart"
virsh destroy e2e-n >/dev/null 2>&1

# --- containment profiles as SELinux types, guest groups (issue 17) --------------------------------
# nonet: svirtd writes svirt_nonet_t into the guest's static seclabel; its qemu asked (QMP netdev_add)
# to open /dev/net/tun is denied by the kernel, while a default guest's qemu opens it (the tap it then
# fails to create is a capability matter, not SELinux's). A default guest with an interface starts and
# its qemu holds the tap libvirt made. A group's disk at s0:cG opens in both members; another guest is
# denied it.
modprobe tun 2>/dev/null
qmp_tap() {  # qmp_tap GUEST IFNAME ID: ask GUEST's qemu to open /dev/net/tun for a tap
    virsh qemu-monitor-command "$1" '{"execute":"netdev_add","arguments":{"type":"tap","id":"'"$3"'","ifname":"'"$2"'","script":"no","downscript":"no"}}' 2>&1
}
TUN_CTX=system_u:object_r:tun_tap_device_t:s0
make_disk $IMAGES/e2e-x.img; restorecon $IMAGES/e2e-x.img
domain e2e-x "$(raw_disk $IMAGES/e2e-x.img vda)" > /tmp/e2e-x.xml
virsh define /tmp/e2e-x.xml >/dev/null
wait_for 30 isolated e2e-x
xiso=$(svirtctl isolate e2e-x --profile nonet 2>&1)
nonet_def() { virsh dumpxml --inactive e2e-x | grep -q ':svirt_nonet_t:'; }
wait_for 30 nonet_def
xstart=$(virsh start e2e-x 2>&1); xstart_rc=$?
label_x=$(field "$(query e2e-x)" '["label"]'); ps_x=$(qemu_label e2e-x)
tun_x=$(qmp_tap e2e-x svx0 nx0)
tun_avc() { [ -n "$label_x" ] && grep "avc:  denied" $AUDIT | grep "scontext=$label_x " | grep -q "tcontext=$TUN_CTX tclass=chr_file"; }
wait_for 10 tun_avc
tun_a=$(qmp_tap e2e-a sva0 na0)
virsh qemu-monitor-command e2e-a '{"execute":"netdev_del","arguments":{"id":"na0"}}' >/dev/null 2>&1
result nonet_denied "$([ $xstart_rc = 0 ] && [[ $label_x == *:svirt_nonet_t:* ]] && [ "$ps_x" = "$label_x" ] && [[ $tun_x == *"could not open /dev/net/tun"*"Permission denied"* ]] && tun_avc && [[ $tun_a != *"could not open /dev/net/tun"* ]]; echo $?)" \
    "start rc=$xstart_rc ps -Z $ps_x query $label_x; nonet tap: $tun_x; AVC: $(grep "scontext=$label_x " $AUDIT | grep -m1 "tcontext=$TUN_CTX" | grep -o 'avc:.*comm="[^"]*"'); default guest's tap (open allowed): $tun_a $xiso $xstart"
echo "--- svirt_nonet_t denials (type class { perms }), deduplicated:"
grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:svirt_nonet_t" |
    sed -E 's/.*denied  \{ ([^}]*) \}.*tcontext=[^:]*:[^:]*:([^:]*):[^ ]* tclass=([^ ]*).*/DENIAL \2 \3 { \1}/' | sort | uniq -c

make_disk $IMAGES/e2e-net.img; restorecon $IMAGES/e2e-net.img
domain e2e-net "$(raw_disk $IMAGES/e2e-net.img vda)" "<interface type='ethernet'><target dev='svnet0'/><model type='virtio'/></interface>" > /tmp/e2e-net.xml
virsh define /tmp/e2e-net.xml >/dev/null
wait_for 30 isolated e2e-net
netstart=$(virsh start e2e-net 2>&1); netstart_rc=$?
label_net=$(field "$(query e2e-net)" '["label"]'); ps_net=$(qemu_label e2e-net)
net_pid=$(cat /run/libvirt/qemu/e2e-net.pid 2>/dev/null)
tap_fds=$(grep -l "^iff:[[:space:]]*svnet0" /proc/"${net_pid:-0}"/fdinfo/* 2>/dev/null | wc -l)
result net_allowed "$([ $netstart_rc = 0 ] && [[ $ps_net == *:svirt_t:* ]] && [ "$ps_net" = "$label_net" ] && [ "$tap_fds" -gt 0 ] && ip link show svnet0 >/dev/null 2>&1; echo $?)" \
    "start rc=$netstart_rc ps -Z $ps_net query $label_net; qemu holds $tap_fds fd(s) on tap svnet0: $(ip -br link show svnet0 2>&1) $netstart"

GROUP_CAT=c1000
GROUPS_CONF=/etc/svirt/svirtd.conf
cp $GROUPS_CONF /tmp/svirtd.conf.groups
printf '\n[groups.e2e]\ncategory = "%s"\nmembers = ["e2e-g1", "e2e-g2"]\n' $GROUP_CAT >> $GROUPS_CONF
systemctl restart svirtd.service
make_disk $IMAGES/group.img; restorecon $IMAGES/group.img
group_disk="<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$IMAGES/group.img'><seclabel model='selinux' relabel='yes'><label>system_u:object_r:svirt_image_t:s0:$GROUP_CAT</label></seclabel></source><target dev='vdb' bus='virtio'/><shareable/></disk>"
for g in e2e-g1 e2e-g2; do
    make_disk $IMAGES/$g.img; restorecon $IMAGES/$g.img
    domain $g "$(raw_disk $IMAGES/$g.img vda)$group_disk" > /tmp/$g.xml
    virsh define /tmp/$g.xml >/dev/null
done
wait_for 30 isolated e2e-g1 && wait_for 30 isolated e2e-g2
level_g1=$(field "$(query e2e-g1)" '["level"]'); level_g2=$(field "$(query e2e-g2)" '["level"]')
gstart=$(virsh start e2e-g1 2>&1 && virsh start e2e-g2 2>&1); gstart_rc=$?
group_label=$(label_of $IMAGES/group.img)
g2_open=$(qmp_open e2e-g2 $IMAGES/group.img grp)
outsider=$(qmp_open e2e-a $IMAGES/group.img grpevil)
in_group() { [[ ,${1#s0:}, == *,$GROUP_CAT,* ]]; }
result group_share "$([ $gstart_rc = 0 ] && in_group "$level_g1" && in_group "$level_g2" && [ "$level_g1" != "$level_g2" ] && [ "$group_label" = "system_u:object_r:svirt_image_t:s0:$GROUP_CAT" ] && [[ $g2_open == *'"return":{}'* ]] && [[ $outsider == *"Permission denied"* ]]; echo $?)" \
    "start rc=$gstart_rc g1 $level_g1 g2 $level_g2 group.img $group_label; g2 opens it: $g2_open; e2e-a ($label_a) opens it: $outsider $gstart"
svirtctl verify > /tmp/verify-17.txt; status=$?
result verify_after_runtime_ops "$status" "$(tr '\n' ' ' < /tmp/verify-17.txt)"
for g in e2e-x e2e-net e2e-g1 e2e-g2; do virsh destroy $g >/dev/null 2>&1; virsh undefine $g >/dev/null 2>&1; done
cp /tmp/svirtd.conf.groups $GROUPS_CONF
systemctl restart svirtd.service
wait_for 30 systemctl is-active --quiet svirtd.service

# --- svirtd under systemd (issue 14) ---------------------------------------------------------------
CONF=/etc/svirt/svirtd.conf
main_pid() { systemctl show -p MainPID --value svirtd.service; }
set_option() {  # set_option KEY VALUE: in svirtd.conf, replacing an earlier setting of KEY
    sed -i "/^$1 *=/d" $CONF; echo "$1 = $2" >> $CONF
}
cp $CONF /tmp/svirtd.conf.orig

# Stopped, a guest is defined; `systemctl start` returns only once svirtd has isolated it (READY=1
# after the first reconcile), so the very next query finds its pair.
systemctl stop svirtd.service
make_disk $IMAGES/e2e-r.img; restorecon $IMAGES/e2e-r.img
domain e2e-r "$(raw_disk $IMAGES/e2e-r.img vda)" > /tmp/e2e-r.xml
virsh define /tmp/e2e-r.xml >/dev/null
since=$(date +%s); sleep 1
t0=$(date +%s%N); systemctl start svirtd.service; start_rc=$?; t1=$(date +%s%N)
level_r=$(field "$(query e2e-r 2>/dev/null)" '["level"]' 2>/dev/null)
# And in svirtd's own words: "reconciled with libvirt" is logged before "ready" (READY=1 follows it).
order=$(journalctl -u svirtd.service --since "@$since" -o cat --no-pager | grep -n -m2 -E '^reconciled with libvirt|^ready: ' | cut -d: -f2 | tr '\n' ' ')
result systemd_ready_after_reconcile "$([ $start_rc = 0 ] && [ -n "$level_r" ] && [[ $order == "reconciled with libvirt ready "* ]]; echo $?)" \
    "systemctl start rc=$start_rc in $(( (t1 - t0) / 1000000 )) ms; e2e-r level right after: '${level_r}'; log order: $order"

status_text=$(systemctl show -p StatusText --value svirtd.service)
result status_line "$([[ $status_text =~ ^[0-9]+\ guests\ isolated,\ [0-9]+\ unconfined,\ libvirt\ connected ]] && systemctl status svirtd.service --no-pager | grep -qF "Status: \"$status_text"; echo $?)" \
    "$status_text"

# systemctl reload: require_confined reaches the hook's environment; the same process goes on.
pid_before=$(main_pid)
set_option require_confined true
reload_out=$(systemctl reload svirtd.service 2>&1); reload_rc=$?
reloaded() { grep -q '^SVIRTD_REQUIRE_CONFINED=1' /run/svirtd/hook.env; }
wait_for 15 reloaded
result systemctl_reload "$([ $reload_rc = 0 ] && reloaded && [ "$(main_pid)" = "$pid_before" ] && systemctl is-active --quiet svirtd.service; echo $?)" \
    "rc=$reload_rc pid $pid_before -> $(main_pid); $(grep REQUIRE /run/svirtd/hook.env) $reload_out"
cp /tmp/svirtd.conf.orig $CONF

# SIGHUP straight from kill (log rotation, an admin): a reload, not the end of svirtd.
kill -HUP "$pid_before"
unreloaded() { grep -q '^SVIRTD_REQUIRE_CONFINED=0' /run/svirtd/hook.env; }
wait_for 15 unreloaded
sleep 1
result sighup_survives "$(unreloaded && [ "$(main_pid)" = "$pid_before" ] && systemctl is-active --quiet svirtd.service; echo $?)" \
    "pid $pid_before -> $(main_pid), $(systemctl is-active svirtd.service); $(grep REQUIRE /run/svirtd/hook.env)"

# Stopped stays stopped: audit traffic (a cross-guest AVC and a user audit message) activates nothing.
systemctl stop svirtd.service
qmp_open e2e-a $IMAGES/e2e-b.img evil2 >/dev/null
auditctl -m "svirtd e2e: audit traffic while svirtd is stopped" 2>/dev/null
sleep 4
stop_state=$(systemctl is-active svirtd.service); sock_state=$(systemctl is-active svirtd-audit.socket)
result stop_sticks "$([ "$stop_state" = inactive ] && [ "$sock_state" = inactive ]; echo $?)" \
    "svirtd.service $stop_state, svirtd-audit.socket $sock_state after audit traffic"
systemctl start svirtd.service

# Watchdog: a SIGSTOPped svirtd sends no keep-alives; systemd aborts, kills and restarts it.
mkdir -p /run/systemd/system/svirtd.service.d
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n' > /run/systemd/system/svirtd.service.d/e2e-watchdog.conf
systemctl daemon-reload; systemctl restart svirtd.service
stopped_pid=$(main_pid); kill -STOP "$stopped_pid"
replaced() { local p; p=$(main_pid); [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$stopped_pid" ] && systemctl is-active --quiet svirtd.service; }
wait_for 60 replaced
result watchdog "$(replaced; echo $?)" \
    "pid $stopped_pid stopped -> $(main_pid) $(systemctl is-active svirtd.service); $(journalctl -u svirtd.service --no-pager | grep -m1 -i watchdog)"
rm -f /run/systemd/system/svirtd.service.d/e2e-watchdog.conf; systemctl daemon-reload; systemctl restart svirtd.service
virsh undefine e2e-r >/dev/null 2>&1

virsh destroy e2e-a; virsh destroy e2e-b
for g in e2e-a e2e-b e2e-c e2e-d e2e-f e2e-n e2e-s; do virsh undefine $g >/dev/null 2>&1; done
restored() { [ "$(label_of $IMAGES/e2e-b.img)" = "$original" ]; }
wait_for 10 restored
result labels_restored "$([ "$disk_b" = "$image_b" ] && [ -n "$image_b" ] && restored; echo $?)" "$(label_of $IMAGES/e2e-b.img) (original $original)"

svirtd_denials=$(grep "avc:  denied" $AUDIT | grep -c "scontext=system_u:system_r:svirtd_t")
result no_svirtd_denials "$([ "$svirtd_denials" = 0 ]; echo $?)" "$svirtd_denials $(grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:svirtd_t" | head -3 | sed 's/.*avc:/avc:/' | tr '\n' ' ')"
echo "--- AVC denials of svirtd_t (type class { perms } comm), deduplicated, for the policy:"
grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:svirtd_t" |
    sed -E 's/.*denied  \{ ([^}]*) \}.*comm="([^"]*)".*tcontext=[^:]*:[^:]*:([^:]*):[^ ]* tclass=([^ ]*).*/DENIAL \3 \4 { \1} comm=\2/' |
    sort | uniq -c | sort -rn
echo "--- AVC denials of libvirtd (virtd_t), deduplicated:"
grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:virtd_t" |
    sed -E 's/.*denied  \{ ([^}]*) \}.*comm="([^"]*)".*tcontext=[^:]*:[^:]*:([^:]*):[^ ]* tclass=([^ ]*).*/DENIAL \3 \4 { \1} comm=\2/' |
    sort | uniq -c | sort -rn
echo "--- AVC denials of guests (svirt_t), deduplicated:"
grep "avc:  denied" $AUDIT | grep "scontext=system_u:system_r:svirt_t" |
    sed -E 's/.*denied  \{ ([^}]*) \}.*comm="([^"]*)".*tcontext=[^:]*:[^:]*:([^:]*):([^ ]*) tclass=([^ ]*).*/DENIAL \3:\4 \5 { \1} comm=\2/' |
    sort | uniq -c | sort -rn | head -20
echo "--- other AVC denials (first 30):"
grep "avc:  denied" $AUDIT | grep -v "scontext=system_u:system_r:svirtd_t" | head -30
echo "--- svirtd journal:"
journalctl -u svirtd --no-pager | tail -40
echo "E2E DONE"
