/* sVirt isolation: svirtd's guests, their labels and denials, live from org.svirt.Manager.
 *
 * Plain JS on Cockpit's own cockpit.js, no build step. Everything comes from D-Bus signals
 * (ObjectManager InterfacesAdded/Removed, PropertiesChanged, Denied): nothing polls. The on-disk
 * labels are not properties (reading them costs svirtd a look at every file), so Query is called
 * per guest when it appears or changes, and on demand from the guest's page. */
"use strict";

const NAME = "org.svirt.Manager";
const PATH = "/org/svirt/Manager";
const MANAGER = "org.svirt.Manager1";
const GUEST = "org.svirt.Guest1";
const PROFILES = ["default", "nosmtp", "nonet"];
const MAX_DENIALS = 50; // Query keeps as many per guest

let client = null;
let manager = null;
let guestObjects = null;
let owner; // svirtd's unique bus name; undefined until the bridge first says

const queries = new Map(); // uuid -> last Query reply (plain values)
const denials = new Map(); // uuid -> [denial] (oldest first)
const released = new Map(); // uuid -> name, for a guest page whose object went away
let sortKey = "name";
let sortAscending = true;

const $ = id => document.getElementById(id);

/* Build an element; text only through textContent (names and labels come from guests' definitions). */
function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
        if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
    }
    return el;
}

/* cockpit.dbus hands out variants as {t, v}; Query's a{sv} nests them. */
function plain(value) {
    if (Array.isArray(value)) return value.map(plain);
    if (value && typeof value === "object") {
        const keys = Object.keys(value);
        if (keys.length === 2 && "t" in value && "v" in value) return plain(value.v);
        const out = {};
        for (const k of keys) out[k] = plain(value[k]);
        return out;
    }
    return value;
}

function announce(text) {
    $("announce").textContent = text;
}

/* svirtd words its errors for admins: show its message, not the error name. */
function showError(what, err) {
    const box = $("notice");
    box.replaceChildren(h("strong", { text: what + " failed: " }), err.message || String(err));
    box.hidden = false;
}

function clearError() {
    $("notice").hidden = true;
    $("notice").replaceChildren();
}

function call(iface, path, method, signature, args) {
    return client.call(path, iface, method, args, { type: signature }).then(reply => plain(reply));
}

/* ---------- status header ---------- */

function yesNo(value) {
    return value === undefined ? "–" : value ? "yes" : "no";
}

function renderStatus() {
    if (!owner || !manager.valid) {
        // Nothing svirtd said before it went away still holds.
        for (const id of ["st-enforcing", "st-libvirt", "st-categories", "st-audit"]) {
            $(id).textContent = "–";
            $(id).className = "";
        }
        return;
    }
    const enforcing = $("st-enforcing");
    enforcing.textContent = yesNo(manager.Enforcing);
    enforcing.className = manager.Enforcing ? "ok" : "warn";
    const lv = $("st-libvirt");
    lv.textContent = manager.LibvirtConnected ? "connected" : "disconnected";
    lv.className = manager.LibvirtConnected ? "ok" : "bad";
    const free = manager.CategoriesFree;
    const total = manager.CategoriesTotal;
    $("st-categories").textContent = free === undefined ? "–" : `${free.toLocaleString()} of ${total.toLocaleString()}`;
    const a = manager.AuditStats || {};
    $("st-audit").textContent = `${a.received || 0} received, ${a.attributed || 0} attributed, ` +
        `${a.unattributed || 0} unattributed, ${a.malformed || 0} malformed, ${a.lost || 0} lost`;
    $("st-audit").className = a.lost ? "warn" : "";
}

function renderService(running) {
    const el = $("st-service");
    el.textContent = running ? `running${manager.Version ? " " + manager.Version : ""}` : "not running";
    el.className = running ? "ok" : "bad";
}

/* ---------- resources ---------- */

// Statuses that are not a fault: labeled; libvirt labels it at start; nothing to read it from;
// not created yet (NVRAM before the first start, a socket qemu creates).
const FINE = new Set(["labeled", "deferred", "not-observed", "absent"]);

function severity(r) {
    if (r.status === "labeled") return "ok";
    if (FINE.has(r.status)) return "info";
    if (r.status === "pending") return "warn";
    // An emulated device has nothing on the host: nobody labeling it is how it should be.
    if (r.status === "not-relabeled" && r.kind === "none") return "info";
    return "bad";
}

function problems(uuid) {
    const q = queries.get(uuid);
    if (!q) return undefined;
    return (q.resources || []).filter(r => severity(r) === "bad" || severity(r) === "warn").length;
}

const SEVERITY_WORDS = { ok: "as expected", info: "not applicable now", warn: "in progress", bad: "not as expected" };

function statusBadge(r) {
    const sev = severity(r);
    return h("span", { class: "badge " + sev, title: SEVERITY_WORDS[sev] },
             h("span", { class: "icon", "aria-hidden": "true", text: { ok: "✔", info: "ℹ", warn: "⏳", bad: "✖" }[sev] }),
             " " + r.status);
}

/* ---------- guests table ---------- */

function guestRow(proxy) {
    const uuid = proxy.UUID;
    const count = problems(uuid);
    const countCell = count === undefined
        ? h("td", { "data-label": "Not as expected", class: "muted", text: "…" })
        : h("td", { "data-label": "Not as expected", class: count ? "bad" : "ok", "data-problems": String(count) },
            count ? `${count} not as expected` : "none");
    const isolation = proxy.Isolation || "";
    return h("tr", { "data-uuid": uuid, "data-name": proxy.Name },
             h("th", { scope: "row", "data-label": "Name", class: "nowrap" },
               h("a", { href: "#" + cockpit.location.encode(["guest", uuid]), text: proxy.Name })),
             h("td", { "data-label": "State", text: proxy.State }),
             h("td", { "data-label": "Level", class: "mono nowrap", text: proxy.Level }),
             h("td", { "data-label": "Profile", text: proxy.Profile }),
             h("td", { "data-label": "Origin", text: proxy.Origin }),
             h("td", { "data-label": "Isolation", class: isolation.startsWith("VIOLATED") ? "bad" : isolation.startsWith("verified") ? "ok" : "muted" },
               breakable(isolation)),
             countCell);
}

function sortValue(proxy, key) {
    if (key === "problems") return problems(proxy.UUID) ?? -1;
    if (key === "level") {
        // s0:cA,cB by number, not text: c9 before c10.
        const m = /c(\d+),c(\d+)/.exec(proxy.Level || "");
        return m ? Number(m[1]) * 1024 + Number(m[2]) : -1;
    }
    return String(proxy[{ name: "Name", state: "State", profile: "Profile", origin: "Origin", isolation: "Isolation" }[key]] || "").toLowerCase();
}

function renderGuests() {
    const needle = $("filter").value.trim().toLowerCase();
    const all = owner === null ? [] : Object.values(guestObjects).filter(p => p.valid && p.UUID);
    const shown = all.filter(p => !needle || [p.Name, p.UUID, p.Level, p.State, p.Profile, p.Origin, p.Isolation]
        .some(v => String(v || "").toLowerCase().includes(needle)));
    shown.sort((a, b) => {
        const x = sortValue(a, sortKey);
        const y = sortValue(b, sortKey);
        const c = x < y ? -1 : x > y ? 1 : 0;
        return (sortAscending ? c : -c) || a.Name.localeCompare(b.Name);
    });
    // Rows are rebuilt on every signal: keep the keyboard focus on the guest it was on.
    const focused = document.activeElement && document.activeElement.closest("#guest-rows tr");
    $("guest-rows").replaceChildren(...shown.map(guestRow));
    if (focused) {
        const row = [...$("guest-rows").rows].find(tr => tr.dataset.uuid === focused.dataset.uuid);
        if (row) row.querySelector("a").focus();
    }
    $("empty").hidden = shown.length > 0;
    $("empty").textContent = all.length ? "No guest matches the filter." : "No guest is isolated.";
    for (const th of document.querySelectorAll("#guests th[data-key]")) {
        th.setAttribute("aria-sort", th.dataset.key === sortKey ? (sortAscending ? "ascending" : "descending") : "none");
    }
}

/* Query reads every label on disk: once per appearance or change of a guest, and on demand. A change
 * while one is under way asks for one more after it (its answer may predate the change). */
const inflight = new Map();
const queryAgain = new Set();
function refreshQuery(uuid) {
    if (inflight.has(uuid)) {
        queryAgain.add(uuid);
        return inflight.get(uuid);
    }
    const p = call(MANAGER, PATH, "Query", "s", [uuid])
        .then(([q]) => {
            queries.set(uuid, q);
            mergeDenials(uuid, q.denials || []);
        })
        .catch(err => {
            // Released or undefined meanwhile: its object goes away by itself.
            if (err.name !== "org.svirt.Manager1.Error.NoSuchGuest") showError("Reading " + uuid, err);
        })
        .finally(() => {
            inflight.delete(uuid);
            if (queryAgain.delete(uuid)) refreshQuery(uuid);
            render();
        });
    inflight.set(uuid, p);
    return p;
}

/* ---------- denials ---------- */

function denialKey(d) {
    return [d.time, d.source_uuid, d.target_uuid, d.path, d.tcontext, (d.permissions || []).join(" ")].join("|");
}

function mergeDenials(uuid, list) {
    const have = denials.get(uuid) || [];
    const seen = new Set(have.map(denialKey));
    for (const d of list) {
        if (!seen.has(denialKey(d))) {
            have.push(d);
            seen.add(denialKey(d));
        }
    }
    have.sort((a, b) => a.time - b.time);
    denials.set(uuid, have.slice(-MAX_DENIALS));
}

function onDenied(d) {
    for (const uuid of new Set([d.source_uuid, d.target_uuid])) {
        if (uuid) mergeDenials(uuid, [d]);
    }
    const current = currentGuest();
    if (current && (d.source_uuid === current || d.target_uuid === current)) {
        renderGuestPage();
        announce(`New denial: ${d.explanation}`);
    }
}

function denialItem(d) {
    const when = new Date(d.time * 1000);
    const who = d.source_name ? `guest ${d.source_name}` : "a process";
    const what = d.target_name ? `guest ${d.target_name}'s` : "a host";
    return h("li", { class: "denial" },
             h("p", {},
               h("time", { datetime: when.toISOString(), text: when.toLocaleString() }), " — ",
               h("strong", { text: `${who} was denied { ${(d.permissions || []).join(" ")} } on ${what} ${d.tclass}` }),
               d.path ? h("span", {}, " ", h("code", { text: d.path })) : null,
               d.suppressed ? ` (${d.suppressed} more held back)` : null),
             h("p", { class: "explanation", text: d.explanation }),
             d.command ? h("p", {}, "To allow it: ", h("code", { text: d.command })) : null,
             h("p", { class: "muted mono small", text: `${d.scontext} → ${d.tcontext}` }));
}

/* ---------- guest page ---------- */

function currentGuest() {
    const path = cockpit.location.path;
    return path[0] === "guest" && path[1] ? path[1] : null;
}

function proxyFor(uuid) {
    if (owner === null) return undefined;
    return Object.values(guestObjects).find(p => p.valid && p.UUID === uuid);
}

function fact(term, value, cls) {
    const empty = value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length);
    return h("div", {}, h("dt", { text: term }), h("dd", { class: cls }, empty ? "–" : value));
}

/* Labels and paths have no spaces: let them wrap after their separators, not mid-word. */
function breakable(text) {
    return String(text).split(/(?<=[:,/_])/).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

function resourceRow(r) {
    const sev = severity(r);
    return h("tr", { class: "sev-" + sev, "data-path": r.path, "data-status": r.status },
             h("td", { "data-label": "Status" }, statusBadge(r)),
             h("td", { "data-label": "Device", text: r.device }),
             h("td", { "data-label": "Path", class: "mono" }, breakable(r.path || "–")),
             h("td", { "data-label": "Class", text: r.class }),
             h("td", { "data-label": "Labeled by", text: r.applier }),
             h("td", { "data-label": "Expected label", class: "mono" }, breakable(r.expected || "–")),
             h("td", { "data-label": "Actual label", class: "mono " + (r.actual === r.expected ? "" : sev) },
               breakable(r.actual || "(none)")),
             h("td", { "data-label": "Reason", text: r.note || (r.status === "labeled" ? "" : "–") }));
}

function renderGuestPage() {
    const uuid = currentGuest();
    const proxy = proxyFor(uuid);
    const q = queries.get(uuid);
    const name = proxy ? proxy.Name : (q ? q.name : released.get(uuid) || uuid);
    if (proxy) released.set(uuid, proxy.Name);
    $("guest-title").textContent = name;
    $("crumb").textContent = name;
    const link = $("machines-link");
    link.href = `/machines#vm?name=${encodeURIComponent(name)}&connection=system`;
    link.setAttribute("aria-label", `Open ${name} in Virtual machines`);

    const isolated = Boolean(proxy);
    const facts = isolated
        ? [fact("UUID", proxy.UUID, "mono"), fact("State", proxy.State), fact("Level", proxy.Level, "mono"),
            fact("Process label", breakable(proxy.Label), "mono"), fact("Image label", breakable(proxy.ImageLabel), "mono"),
            fact("Profile", proxy.Profile), fact("Origin", proxy.Origin),
            fact("Isolation", proxy.Isolation, (proxy.Isolation || "").startsWith("VIOLATED") ? "bad" : ""),
            proxy.Note ? fact("Note", proxy.Note) : null]
        : [fact("UUID", uuid, "mono"), fact("Isolation", "not isolated by svirtd (released, or not known)", "warn")];
    $("guest-facts").replaceChildren(...facts.filter(Boolean));
    $("btn-release").disabled = !isolated;
    $("btn-verify").disabled = !isolated;
    $("btn-refresh").disabled = !isolated;
    if (isolated && document.activeElement !== $("guest-profile")) $("guest-profile").value = proxy.Profile || "default";

    const resources = isolated && q ? q.resources || [] : [];
    // Emulated devices have nothing on the host to label: listed apart, folded, to keep files in view.
    const onHost = resources.filter(r => r.kind !== "none");
    const emulated = resources.filter(r => r.kind === "none");
    $("resource-rows").replaceChildren(...onHost.map(resourceRow));
    if (isolated && !q) $("resource-rows").replaceChildren(h("tr", {}, h("td", { colspan: "8", class: "muted", text: "Reading labels…" })));
    $("emulated").hidden = emulated.length === 0;
    $("emulated-summary").textContent = `${emulated.length} emulated device${emulated.length === 1 ? "" : "s"}: nothing on the host to label`;
    $("emulated-rows").replaceChildren(...emulated.map(r => h("tr", { "data-status": r.status },
        h("td", { "data-label": "Device", text: r.device }),
        h("td", { "data-label": "Status" }, statusBadge(r)),
        h("td", { "data-label": "Reason", text: r.note }))));

    const list = (denials.get(uuid) || []).slice().reverse();
    $("denials").replaceChildren(...list.map(denialItem));
    $("no-denials").hidden = list.length > 0;
}

/* Follow the name itself on a client of its own: connect whenever svirtd takes it. */
function watchName() {
    const bus = cockpit.dbus("org.freedesktop.DBus", { bus: "system" });
    bus.subscribe({ path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus",
                    member: "NameOwnerChanged", arg0: NAME },
                  (path, iface, signal, args) => {
                      if (args[2]) connect(); // (name, old owner, new owner)
                  });
    connect();
}

/* ---------- views and actions ---------- */

function render() {
    renderStatus();
    const uuid = currentGuest();
    $("list-view").hidden = Boolean(uuid);
    $("guest-view").hidden = !uuid;
    if (uuid) renderGuestPage();
    else renderGuests();
}

function busy(button, promise) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    return promise.finally(() => {
        button.disabled = false;
        button.removeAttribute("aria-busy");
        render();
    });
}

function verifyReport(result) {
    const violations = result.violations || [];
    return h("div", { class: "verify " + (result.ok ? "ok" : "bad"), role: "status" },
             h("p", {}, h("strong", { text: result.ok ? "Isolation verified" : `${violations.length} violation(s)` }),
               result.policy ? ` against ${result.policy}` : "",
               result.checks !== undefined ? ` (${result.checks} checks)` : ""),
             violations.length
                 ? h("ul", {}, violations.map(v => h("li", { text: v.message || `${v.kind}: ${v.subject} ${v.permission} ${v.path}` })))
                 : null);
}

function isolate(ref, profile, button) {
    clearError();
    return busy(button, call(MANAGER, PATH, "Isolate", "ss", [ref, profile])
        .then(([q]) => {
            queries.set(q.uuid, q);
            announce(`${q.name} isolated at ${q.level}`);
            return q;
        })
        .catch(err => showError("Isolate", err)));
}

function setupProfiles(select) {
    select.replaceChildren(...PROFILES.map(p => h("option", { value: p, text: p })));
}

function onLocation() {
    clearError();
    $("guest-verify").replaceChildren();
    const uuid = currentGuest();
    render();
    if (uuid) {
        if (proxyFor(uuid)) refreshQuery(uuid);
        $("guest-title").focus();
    } else {
        $("main").focus();
    }
}

/* One client per svirtd instance: the bridge closes a client whose name has no owner ("not-found")
 * and does not replay a namespace watch for a new owner, so every svirtd that appears on the bus
 * (started late, restarted) gets a fresh client, proxies and subscription. */
function connect() {
    const old = client;
    client = null; // so that its "close" below is not taken for a lost connection
    if (old) old.close();
    // superuser "try": the bridge's root half when the admin has it, so Isolate/Release/Verify pass
    // without polkit asking; otherwise the calls go as the logged-in user and polkit decides.
    client = cockpit.dbus(NAME, { bus: "system", superuser: "try" });
    manager = client.proxy(MANAGER, PATH);
    guestObjects = client.proxies(GUEST, PATH);
    const mine = client;

    client.addEventListener("owner", (ev, now) => {
        owner = now;
        renderService(now);
        if (!now) queries.clear();
        render();
    });
    client.addEventListener("close", (ev, options) => {
        if (mine !== client) return; // replaced on purpose
        owner = null;
        renderService(null);
        render();
        document.body.dataset.loaded = "true";
        if (options.problem !== "not-found") showError("Connecting to svirtd", { message: cockpit.message(options) });
    });
    manager.addEventListener("changed", () => { renderService(true); renderStatus(); });
    manager.wait().then(() => { if (manager.valid) renderService(true); renderStatus(); });

    guestObjects.addEventListener("added", (ev, proxy) => {
        released.delete(proxy.UUID);
        refreshQuery(proxy.UUID);
        render();
    });
    guestObjects.addEventListener("changed", (ev, proxy) => {
        refreshQuery(proxy.UUID);
        render();
    });
    guestObjects.addEventListener("removed", (ev, proxy) => {
        queries.delete(proxy.UUID);
        released.set(proxy.UUID, proxy.Name);
        render();
    });
    guestObjects.wait(() => {
        for (const p of Object.values(guestObjects)) refreshQuery(p.UUID);
        render();
        document.body.dataset.loaded = "true";
    });

    client.subscribe({ interface: MANAGER, path: PATH, member: "Denied" },
                     (path, iface, signal, args) => onDenied(plain(args[0])));
    // An isolation is complete (its files labeled): a Query made while it was under way saw them
    // pending, and the guest's properties need not change when the labels land.
    client.subscribe({ interface: MANAGER, path: PATH, member: "Isolated" },
                     (path, iface, signal, args) => { if (proxyFor(args[0])) refreshQuery(args[0]); });
}

function init() {
    setupProfiles($("isolate-profile"));
    setupProfiles($("guest-profile"));

    $("filter").addEventListener("input", renderGuests);
    for (const th of document.querySelectorAll("#guests th[data-key]")) {
        th.querySelector("button").addEventListener("click", () => {
            sortAscending = th.dataset.key === sortKey ? !sortAscending : true;
            sortKey = th.dataset.key;
            renderGuests();
        });
    }
    $("isolate-form").addEventListener("submit", ev => {
        ev.preventDefault();
        isolate($("isolate-guest").value.trim(), $("isolate-profile").value, ev.submitter || $("isolate-form").querySelector("button"))
            .then(q => { if (q) $("isolate-guest").value = ""; });
    });
    $("verify-all").addEventListener("click", ev => {
        clearError();
        busy(ev.currentTarget, call(MANAGER, PATH, "Verify", "", [])
            .then(([result]) => $("verify-result").replaceChildren(verifyReport(result)))
            .catch(err => showError("Verify", err)));
    });
    $("guest-actions").addEventListener("submit", ev => {
        ev.preventDefault();
        isolate(currentGuest(), $("guest-profile").value, $("btn-isolate"))
            .then(q => { if (q) refreshQuery(q.uuid); });
    });
    $("btn-release").addEventListener("click", ev => {
        const uuid = currentGuest();
        const proxy = proxyFor(uuid);
        clearError();
        busy(ev.currentTarget, call(GUEST, proxy.path, "Release", "", [])
            .then(() => {
                queries.delete(uuid);
                announce(`${proxy.Name} released: its files carry their original labels again`);
            })
            .catch(err => showError("Release", err)));
    });
    $("btn-verify").addEventListener("click", ev => {
        const proxy = proxyFor(currentGuest());
        clearError();
        busy(ev.currentTarget, call(GUEST, proxy.path, "Verify", "", [])
            .then(([result]) => $("guest-verify").replaceChildren(verifyReport(result)))
            .catch(err => showError("Verify", err)));
    });
    $("btn-refresh").addEventListener("click", ev => busy(ev.currentTarget, refreshQuery(currentGuest())));
    $("machines-link").addEventListener("click", ev => {
        // Inside Cockpit's shell the page is a frame: let the shell navigate to the machines page.
        if (window.parent !== window) {
            ev.preventDefault();
            cockpit.jump(ev.currentTarget.getAttribute("href"));
        }
    });

    watchName();
    cockpit.addEventListener("locationchanged", onLocation);
    onLocation();
}

document.addEventListener("DOMContentLoaded", init);
