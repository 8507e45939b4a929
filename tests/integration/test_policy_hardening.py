"""Issue 13 (16) and issue 12: svirtd's policy module, narrowed, judged offline on the compiled policy.

svirtd.pp is installed into a COPY of the host's store with neverallow checking (expand-check=1), as
Debian 12's refpolicy (2.20221101) has it: without virtqemud_t and virt_hook_t, so the module's
blocks for modular libvirt must drop out at link time. A stand-in module that only declares those
two types is then installed on top, and the same blocks must be linked and do what they say. The
decisions come from libsepol (audit2why, MCS constraints included), never from sesearch.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from svirtd.policy_judge import PolicyJudge
from testbed.policy_store import REPO, PolicyStoreCopy, build_module

pytestmark = pytest.mark.integration
SVIRTD = "system_u:system_r:svirtd_t:s0"
VIRTD = "system_u:system_r:virtd_t:s0-s0:c0.c1023"
GUEST_IMAGE = "system_u:object_r:svirt_image_t:s0:c12,c345"


def obj(type_: str) -> str:
    return f"system_u:object_r:{type_}:s0"


@dataclass(frozen=True)
class Policies:
    debian12: PolicyJudge  # the host's policy + svirtd.pp: no virtqemud_t, no virt_hook_t
    modular: PolicyJudge  # the same + the stand-in declaring both


@pytest.fixture(scope="session")
def policies(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Policies]:
    work = tmp_path_factory.mktemp("policy-hardening")
    store = PolicyStoreCopy(work / "root")
    installed = store.install(build_module(REPO / "policy", work / "build", "svirtd"))
    assert installed.returncode == 0, installed.stderr
    debian12 = work / "debian12.policy"
    shutil.copy(store.policy_file, debian12)  # the next install rewrites the store's file
    standin = build_module(REPO / "tests" / "fixtures" / "policy", work / "standin", "svirtd_modular_standin")
    installed = store.install(standin)
    assert installed.returncode == 0, installed.stderr
    yield Policies(PolicyJudge(debian12), PolicyJudge(store.policy_file))
    shutil.rmtree(work)


def allowed(judge: PolicyJudge, source: str, target: str, tclass: str, perm: str) -> bool:
    return judge.decide(source, target, tclass, [perm]).allowed


def test_svirtd_relabels_to_the_guest_labels_and_back_to_where_images_live_only(policies: Policies) -> None:
    judge = policies.debian12
    # To: the labels svirtd hands out, and the originals Release puts back.
    for target in (GUEST_IMAGE, obj("svirt_image_t"), obj("virt_content_t"), obj("virt_image_t"),
                   obj("svirt_runtime_t"), obj("virt_var_lib_t"), obj("var_t"), obj("default_t"),
                   obj("user_home_t")):
        for tclass in ("file", "dir", "sock_file"):
            assert allowed(judge, SVIRTD, target, tclass, "relabelto"), (target, tclass)
    # Block disks: fixed disks to the guest labels and back (svirt_image_t was missing before).
    for target in (GUEST_IMAGE, obj("virt_content_t"), obj("fixed_disk_device_t")):
        assert allowed(judge, SVIRTD, target, "blk_file", "relabelto"), target
    assert allowed(judge, SVIRTD, GUEST_IMAGE, "blk_file", "relabelfrom")
    # Never to what other domains trust: configuration, executables, libraries, secrets, /usr.
    for target in ("etc_t", "shadow_t", "bin_t", "lib_t", "boot_t", "sshd_exec_t", "shell_exec_t", "usr_t",
                   "svirtd_var_lib_t", "svirtd_runtime_t", "virt_etc_t", "tmp_t"):
        for tclass in ("file", "dir", "sock_file"):
            assert not allowed(judge, SVIRTD, obj(target), tclass, "relabelto"), (target, tclass)
    # From: an image's original can be any ordinary type, but nothing svirtd's path policy refuses.
    for source in ("virt_image_t", "default_t", "var_t", "user_home_t", "usr_t", "user_tmp_t", "virt_log_t"):
        assert allowed(judge, SVIRTD, obj(source), "file", "relabelfrom"), source
    for source in ("etc_t", "shadow_t", "bin_t", "lib_t", "boot_t", "sshd_exec_t", "svirtd_var_lib_t",
                   "svirtd_runtime_t", "svirtd_conf_t"):
        assert not allowed(judge, SVIRTD, obj(source), "file", "relabelfrom"), source


def test_libvirtd_reads_hook_env_and_only_svirtd_writes_it(policies: Policies) -> None:
    judge = policies.debian12
    hook_env, markers, conf = obj("svirtd_runtime_t"), obj("svirtd_hook_runtime_t"), obj("svirtd_conf_t")
    for perm in ("read", "open", "getattr"):
        assert allowed(judge, VIRTD, hook_env, "file", perm), perm
    for perm in ("write", "append", "setattr", "unlink", "rename", "link", "create", "relabelfrom", "relabelto"):
        assert not allowed(judge, VIRTD, hook_env, "file", perm), perm
    # Nor may it replace hook.env by a file of its own (rename over it, unlink and create).
    for perm in ("write", "add_name", "remove_name", "reparent", "rmdir", "setattr", "create"):
        assert not allowed(judge, VIRTD, hook_env, "dir", perm), perm
    for perm in ("write", "create", "rename", "unlink"):
        assert allowed(judge, SVIRTD, hook_env, "file", perm), perm
    # The markers of guests started unconfined are the hook's to write, and svirtd's to remove.
    for perm in ("create", "write", "unlink"):
        assert allowed(judge, VIRTD, markers, "file", perm), perm
    assert allowed(judge, VIRTD, markers, "dir", "add_name")
    assert allowed(judge, SVIRTD, markers, "file", "unlink") and allowed(judge, SVIRTD, markers, "dir", "read")
    # require_confined from svirtd.conf before svirtd ever ran; the bus, both ways.
    assert allowed(judge, VIRTD, conf, "file", "read") and not allowed(judge, VIRTD, conf, "file", "write")
    assert allowed(judge, VIRTD, SVIRTD, "dbus", "send_msg") and allowed(judge, SVIRTD, VIRTD, "dbus", "send_msg")
    # systemd creates /run/svirtd/unconfined (RuntimeDirectory=) with the type the file contexts give it.
    init = "system_u:system_r:init_t:s0-s0:c0.c1023"
    assert allowed(judge, init, markers, "dir", "create") and allowed(judge, init, hook_env, "dir", "add_name")


@pytest.mark.parametrize("hook_domain", ["virtqemud_t", "virt_hook_t"])
def test_modular_libvirt_rules_are_linked_only_where_the_types_exist(policies: Policies, hook_domain: str) -> None:
    source = f"system_u:system_r:{hook_domain}:s0-s0:c0.c1023"
    assert not policies.debian12.valid_context(source)  # Debian 12: absent, and svirtd.pp installed anyway
    judge = policies.modular
    assert judge.valid_context(source)
    assert allowed(judge, source, obj("svirtd_runtime_t"), "file", "read")
    assert not allowed(judge, source, obj("svirtd_runtime_t"), "file", "write")
    assert not allowed(judge, source, obj("svirtd_runtime_t"), "dir", "add_name")
    assert allowed(judge, source, obj("svirtd_hook_runtime_t"), "file", "create")
    assert allowed(judge, source, SVIRTD, "dbus", "send_msg") and allowed(judge, SVIRTD, source, "dbus", "send_msg")
    if hook_domain == "virtqemud_t":  # svirtd follows virtqemud over its socket
        assert allowed(judge, SVIRTD, source, "unix_stream_socket", "connectto")


def test_policy_lint_exits_non_zero_on_a_finding_and_zero_on_the_module(tmp_path: Path) -> None:
    dry = subprocess.run(["make", "-n", "policy-lint"], cwd=REPO, capture_output=True, text=True, check=True)
    recipe = next(line for line in dry.stdout.splitlines() if "selint" in line)
    clean = subprocess.run(recipe, shell=True, cwd=REPO, capture_output=True, text=True)  # noqa: S602 - the Makefile's
    assert clean.returncode == 0, clean.stdout + clean.stderr
    shutil.copytree(REPO / "policy", tmp_path / "policy", ignore=shutil.ignore_patterns("tmp", "*.pp"))
    with (tmp_path / "policy" / "svirtd.te").open("a") as te:
        te.write("allow svirtd_t self:capability sys_nice;\n")  # out of order: selint C-001
    finding = subprocess.run(recipe, shell=True, cwd=tmp_path, capture_output=True, text=True)  # noqa: S602
    assert "C-001" in finding.stdout
    assert finding.returncode != 0, "selint reported a finding and `make policy-lint` still exited 0"
