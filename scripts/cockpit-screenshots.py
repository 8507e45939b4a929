"""Screenshots of the Cockpit page for the README, taken against the real stack (as root).

A private bus, libvirtd and svirtd (testbed.stack) with three small guests; one gets the nosmtp profile,
one disk is relabeled behind svirtd's back (drifted) and a denial between two guests is sent through the
kernel; cockpit-ws and headless Chromium show the page. Writes docs/cockpit-guests.png and
docs/cockpit-guest.png; everything it started is stopped and removed afterwards.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selenium.webdriver.remote.webdriver import WebDriver

from testbed.cockpit import chromium, cockpit_ws, js
from testbed.daemon import call_json
from testbed.guests import IMAGE_ROOT
from testbed.stack import private_stack
from tests.conftest import wait_until
from tests.integration.test_audit import avc_text, inject

DOCS = Path(__file__).resolve().parent.parent / "docs"
PREFIX = "vm"  # guest names as an admin would pick them: vm-web01, ...
WIDTH = 1000


def shoot(driver: WebDriver, path: Path) -> None:
    """The page at WIDTH, as tall as its content, as a PNG."""
    for _ in range(2):  # the height depends on how text wraps at the new size: measure again
        inner = int(js(driver, "return window.innerHeight"))
        tall = int(js(driver, "return document.documentElement.scrollHeight"))
        driver.set_window_size(WIDTH, driver.get_window_size()["height"] + tall - inner)
        time.sleep(0.3)
    driver.save_screenshot(str(path))
    print(f"{path}: {path.stat().st_size // 1024} KiB")


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: it starts libvirtd, a bus and svirtd", file=sys.stderr)
        return 1
    # Images in a directory of this run's own (GuestFactory removes <image root>/<prefix> afterwards:
    # never an admin's /var/lib/libvirt/images/vm).
    images = Path(tempfile.mkdtemp(prefix="svirtd-shots-", dir=IMAGE_ROOT))
    try:
        return take(images)
    finally:
        shutil.rmtree(images, ignore_errors=True)


def take(images: Path) -> int:
    with private_stack(PREFIX, log_level="warning") as st:
        st.guests.image_root = images
        web = st.guests.new(disks=2, name=f"{PREFIX}-web01")
        db = st.guests.new(name=f"{PREFIX}-db01")
        mail = st.guests.new(name=f"{PREFIX}-mail01")
        def level(uuid: str) -> str:
            return str(call_json(st.bus.address, "Query", "s", uuid)[0]["level"])

        for g in (web, db, mail):
            wait_until(functools.partial(level, g.uuid), what=g.name)
        call_json(st.bus.address, "Isolate", "ss", mail.name, "nosmtp")
        # Somebody relabels web01's second disk: the page shows it drifted, in red, with svirtd's note.
        os.setxattr(web.disks[1].path, "security.selinux", b"system_u:object_r:virt_image_t:s0\0")
        levels = {g.uuid: level(g.uuid) for g in (web, db)}
        with tempfile.TemporaryDirectory(prefix="svirt-shots-") as tmp, \
                cockpit_ws(Path(tmp) / "ws", st.bus.address) as url, chromium(Path(tmp) / "browser", WIDTH) as d:
            d.get(url)
            wait_until(lambda: len(js(d, "return document.querySelectorAll('#guest-rows td[data-problems]')")) == 3,
                       what="three guests with their labels read")
            shoot(d, DOCS / "cockpit-guests.png")
            d.get(url + f"#/guest/{web.uuid}")
            wait_until(lambda: js(d, "return document.querySelectorAll('#resource-rows tr[data-status]').length"),
                       what="web01's resources")
            inject(avc_text(levels[web.uuid], levels[db.uuid], marker="db01-data.img"))
            wait_until(lambda: js(d, "return document.querySelectorAll('#denials li').length"), what="the denial")
            js(d, "document.activeElement.blur()")
            shoot(d, DOCS / "cockpit-guest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
