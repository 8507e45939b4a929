"""Issue 18: the Cockpit page, in a real browser, against the real stack.

The private bus, libvirtd with real qemu guests and svirtd come from the usual fixtures; cockpit-ws
serves the repo's cockpit/ over a local root session whose bridge talks to that bus; headless Chromium
loads the page. Denials are injected as USER_AVC through the kernel, as test_audit does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from svirtd import __version__
from testbed.bus import PrivateBus
from testbed.client import SvirtClient
from testbed.cockpit import chromium, cockpit_ws, js
from testbed.daemon import SvirtdProcess
from testbed.guests import Guest, GuestFactory
from tests.conftest import wait_until
from tests.helpers import run, xattr
from tests.integration.test_audit import avc_text, inject, levels_of

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
NOBODY = 65534

# The table as the page shows it: one entry per row, read in one round trip.
ROWS_JS = """
return [...document.querySelectorAll('#guest-rows tr')].map(tr => ({
    uuid: tr.dataset.uuid, name: tr.dataset.name,
    cells: [...tr.children].map(c => c.textContent.trim()),
    problems: tr.lastElementChild.dataset.problems ?? null}));
"""
RESOURCES_JS = """
return [...document.querySelectorAll('#resource-rows tr')].map(tr => ({
    path: tr.dataset.path, status: tr.dataset.status,
    cells: [...tr.children].map(c => c.textContent.trim())}));
"""

NO_SIDEWAYS_SCROLL = "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"


@contextlib.contextmanager
def open_page(bus: PrivateBus, tmp_path: Path, uid: int | None = None) -> Iterator[WebDriver]:
    with cockpit_ws(tmp_path / "cockpit", bus.address, uid) as url, chromium(tmp_path / "browser") as driver:
        driver.get(url)
        wait_until(lambda: js(driver, "return document.body.dataset.loaded"), 30, 0.1,
                   what="the page's first listing of guests")
        yield driver


@pytest.fixture
def page(bus: PrivateBus, tmp_path: Path) -> Iterator[WebDriver]:
    """The page as root sees it (the bridge of a root session, or anyone's with administrative access)."""
    with open_page(bus, tmp_path) as driver:
        yield driver


def rows(driver: WebDriver) -> dict[str, dict[str, Any]]:
    return {r["uuid"]: r for r in js(driver, ROWS_JS)}


def categories(bus: PrivateBus) -> str:
    """CategoriesFree of CategoriesTotal, as the header words them."""
    async def get() -> str:
        async with SvirtClient(bus.address) as c:
            return f"{await c.prop('CategoriesFree'):,} of {await c.prop('CategoriesTotal'):,}"

    return str(run(get()))


def press(driver: WebDriver, css: str, key: str | None = None) -> None:
    """Click what css selects (or press key on it), again if the page rebuilt it meanwhile: rows are
    rebuilt on every signal."""
    def once() -> bool:
        element = driver.find_element(By.CSS_SELECTOR, css)
        if key is None:
            element.click()
        else:
            element.send_keys(key)
        return True

    wait_until(once, 10, 0.05, what=f"{key or 'a click'} on {css}")


def goto(driver: WebDriver, guest: Guest) -> None:
    """The guest's page by its address (cockpit.location: the URL's fragment), as a bookmark would."""
    driver.get(driver.current_url.split("#")[0] + f"#/guest/{guest.uuid}")
    wait_until(lambda: driver.find_element(By.ID, "guest-title").text == guest.name, 10, 0.05,
               what=f"{guest.name}'s page")


def denial_texts(driver: WebDriver) -> list[str]:
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#denials li")]


def test_cockpit_page_follows_svirtd_live(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                          page: WebDriver) -> None:
    t0 = time.monotonic()
    proc = svirtd()
    a = guests.new(define=False)
    original = xattr(a.disk)  # what Release must put back (none: nothing labeled it before svirtd)
    guests.define(a)
    b = guests.new()
    la, lb = levels_of(bus, a, b)

    page_url = page.current_url
    # Two guests, their own distinct levels, each with its one disk as expected.
    # Both listed with their resources as expected: a row may first show a disk "in progress" (the page
    # asked while its label was being applied) and must then follow on its own.
    listed = wait_until(lambda: (r := rows(page)).get(a.uuid) and r.get(b.uuid) and r[a.uuid]["problems"] == "0"
                        and r[b.uuid]["problems"] == "0" and r, 20, 0.1, what="both guests in the table, as expected")
    assert isinstance(listed, dict)
    assert listed[a.uuid]["cells"][2] == la and listed[b.uuid]["cells"][2] == lb and la != lb
    assert listed[a.uuid]["cells"][0] == a.name and listed[a.uuid]["problems"] == "0"
    print(f"two guests listed {time.monotonic() - t0:.1f} s after svirtd started")

    # A third guest appears without a reload (the marker survives only in the same document).
    js(page, "window.__same_document = true")
    t1 = time.monotonic()
    c = guests.new()
    wait_until(lambda: c.uuid in rows(page), 20, 0.05, what="the third guest in the table")
    print(f"third guest shown {time.monotonic() - t1:.2f} s after virsh define")
    assert js(page, "return window.__same_document") is True
    assert len({r["cells"][2] for r in rows(page).values()} & {la, lb}) == 2

    # The header: svirtd's properties, CategoriesFree following the third guest's pair.
    header = {k: page.find_element(By.ID, f"st-{k}").text for k in ("service", "enforcing", "libvirt")}
    assert header == {"service": f"running {__version__}", "enforcing": "no", "libvirt": "connected"}, header
    wait_until(lambda: page.find_element(By.ID, "st-categories").text == categories(bus), 5, 0.05,
               what="free pairs of the total as svirtd counts them")

    # Filtering narrows the table to matching guests; clearing it brings them back.
    page.find_element(By.ID, "filter").send_keys(c.name)
    wait_until(lambda: list(rows(page)) == [c.uuid], 5, 0.05, what="the filter")
    js(page, "const f = document.getElementById('filter'); f.value = '';"
                        "f.dispatchEvent(new Event('input'))")

    # A's page, by keyboard: Enter on its link; the page's heading takes the focus.
    press(page, f"#guest-rows tr[data-uuid='{a.uuid}'] a", Keys.ENTER)
    wait_until(lambda: page.find_element(By.ID, "guest-title").text == a.name, 10, 0.05, what="a's page")
    assert page.switch_to.active_element.get_attribute("id") == "guest-title"

    # The disk with expected and actual label (as on disk), and a link to cockpit-machines.
    res = wait_until(lambda: js(page, RESOURCES_JS), 10, 0.05, what="a's resources")
    assert isinstance(res, list)
    disk = next(r for r in res if r["path"] == str(a.disk))
    assert disk["status"] == "labeled" and "labeled" in disk["cells"][0]
    assert disk["cells"][5] == disk["cells"][6] == xattr(a.disk) == f"system_u:object_r:svirt_image_t:{la}"
    link = page.find_element(By.ID, "machines-link").get_attribute("href")
    assert link is not None and link.endswith(f"/machines#vm?name={a.name}&connection=system")

    # A denial of a's qemu on b's image shows on a's page within 2 s, live from the Denied signal.
    marker = f"cockpit-{a.uuid[:8]}"
    t2 = time.monotonic()
    inject(avc_text(la, lb, marker=marker))
    wait_until(lambda: any(marker in t for t in denial_texts(page)), 2.0, 0.02, what="the denial on a's page")
    print(f"denial shown on a's page {(time.monotonic() - t2) * 1000:.0f} ms after the record was sent")
    # AuditStats counts every record of the host (other suites' too): at least this one.
    wait_until(lambda: int(page.find_element(By.ID, "st-audit").text.split()[0]) >= 1, 5, 0.05,
               what="AuditStats in the header")
    shown = next(t for t in denial_texts(page) if marker in t)
    assert f"guest {a.name} was denied {{ read write }} on guest {b.name}'s file" in shown
    assert f"MCS isolation between guest {a.name} and guest {b.name}" in shown

    # Not on a guest it does not involve: c's page (from Query's history) has no such denial.
    goto(page, c)
    wait_until(lambda: js(page, RESOURCES_JS), 10, 0.05, what="c's resources")
    assert not any(marker in t for t in denial_texts(page))

    # Isolate with another profile and Verify, from b's page.
    goto(page, b)
    page.find_element(By.ID, "guest-profile").send_keys("nosmtp")  # typed, as with a keyboard
    page.find_element(By.ID, "btn-isolate").click()
    wait_until(lambda: "Profile\nnosmtp" in page.find_element(By.ID, "guest-facts").text, 20, 0.05,
               what="b's profile nosmtp")
    page.find_element(By.ID, "btn-verify").click()
    verdict = wait_until(lambda: page.find_element(By.ID, "guest-verify").text, 30, 0.05, what="b's proof")
    assert isinstance(verdict, str) and verdict.startswith("Isolation verified against "), verdict

    # An error is shown as svirtd words it.
    page.get(page.current_url.split("#")[0] + "#/")
    wait_until(lambda: page.find_element(By.ID, "isolate-guest").is_displayed(), 10, 0.05, what="the guests table")
    page.find_element(By.ID, "isolate-guest").send_keys(f"{guests.prefix}-no-such-guest")
    page.find_element(By.CSS_SELECTOR, "#isolate-form button[type=submit]").click()
    notice = wait_until(lambda: page.find_element(By.ID, "notice").text, 10, 0.05, what="the error notice")
    assert isinstance(notice, str) and notice.startswith("Isolate failed: ")
    assert f"{guests.prefix}-no-such-guest" in notice

    # Release from a's page puts the disk's original label back, and a leaves the table.
    goto(page, a)
    wait_until(lambda: page.find_element(By.ID, "btn-release").is_enabled(), 10, 0.05, what="a's Release button")
    page.find_element(By.ID, "btn-release").click()
    wait_until(lambda: xattr(a.disk) == original, 20, 0.05, what="a's original disk label")
    wait_until(lambda: "not isolated" in page.find_element(By.ID, "guest-facts").text, 10, 0.05,
               what="a's page saying it is released")
    page.get(page.current_url.split("#")[0] + "#/")
    wait_until(lambda: a.uuid not in rows(page) and b.uuid in rows(page), 10, 0.05, what="a gone from the table")

    # Inside Cockpit's shell (a frame): the address bar follows the page, and the machines link jumps.
    base = page.current_url.split("/cockpit/")[0]
    page.get(f"{base}/svirt")
    frame = wait_until(lambda: page.find_element(By.CSS_SELECTOR, "iframe[name='cockpit1:localhost/svirt']"), 20,
                       0.1, what="the page in the shell")
    page.switch_to.frame(frame)
    wait_until(lambda: b.uuid in rows(page), 20, 0.05, what="b in the framed table")
    press(page, f"#guest-rows tr[data-uuid='{b.uuid}'] a")
    page.switch_to.default_content()
    wait_until(lambda: page.current_url == f"{base}/svirt#/guest/{b.uuid}", 10, 0.05, what="the shell's address")
    page.switch_to.frame(frame)
    page.find_element(By.ID, "machines-link").click()
    page.switch_to.default_content()
    wait_until(lambda: page.current_url == f"{base}/machines#vm?name={b.name}&connection=system", 10, 0.05,
               what="the shell at cockpit-machines' page of b")
    page.get(page_url)
    wait_until(lambda: b.uuid in rows(page), 20, 0.05, what="the table again")

    # svirtd restarts: the page says so, then lists its guests again by itself.
    proc.stop()
    wait_until(lambda: page.find_element(By.ID, "st-service").text == "not running", 10, 0.05, what="not running")
    proc.start()
    wait_until(lambda: {b.uuid, c.uuid} <= set(rows(page)), 20, 0.05, what="the guests back after a restart")
    print(f"whole scenario {time.monotonic() - t0:.1f} s")


def test_cockpit_page_for_a_user_without_privileges(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                    tmp_path: Path) -> None:
    """Logged in without administrative access, the bridge calls as that user: the bus policy lets it
    read everything and hear the signals; changing isolation is svirtd's (polkit's) call, and its
    refusal is shown in its own words."""
    svirtd()
    a, b = guests.new(), guests.new()
    la, lb = levels_of(bus, a, b)
    labeled = xattr(a.disk)
    with open_page(bus, tmp_path, uid=NOBODY) as page:
        wait_until(lambda: {a.uuid, b.uuid} <= set(rows(page)), 20, 0.05, what="both guests in the table")
        # A narrow window (a phone, a shell beside a terminal): rows become cards, nothing scrolls sideways.
        page.set_window_size(400, 800)
        assert js(page, NO_SIDEWAYS_SCROLL), "the guests table scrolls sideways at 400 px"
        goto(page, a)
        wait_until(lambda: js(page, RESOURCES_JS), 10, 0.05, what="a's resources")
        assert js(page, NO_SIDEWAYS_SCROLL), "a guest's page scrolls sideways at 400 px"
        marker = f"cockpit-nobody-{a.uuid[:8]}"
        inject(avc_text(la, lb, marker=marker))
        wait_until(lambda: any(marker in t for t in denial_texts(page)), 2.0, 0.02, what="the denial on a's page")
        page.find_element(By.ID, "btn-release").click()
        notice = wait_until(lambda: page.find_element(By.ID, "notice").text, 10, 0.05, what="the refusal")
        # svirtd's own sentence (Guest1.Release), not a generic D-Bus or Cockpit error.
        assert notice == f"Release failed: polkit is not running, so only root may release {a.name}", notice
        print(f"shown to uid {NOBODY}: {notice}")
    assert xattr(a.disk) == labeled
