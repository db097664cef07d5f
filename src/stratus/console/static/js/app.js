// The Stratus console: sign-in, images, instances and the operations panel. Plain ES modules, no build.
import { h, s, replace, localTime, bytes, stateClass, field, setInvalid } from "./dom.js";
import { call, data, setAuthFailureHandler, ApiError } from "./api.js";
import { rootKey } from "./tc3.js";
import * as session from "./session.js";
import { uploadFile, forgetId } from "./upload.js";
import { Operations } from "./ops.js";

const $ = (id) => document.getElementById(id);
const app = {
  cred: null, expiresAt: 0, region: null, regions: [], ops: null, refresh: null, timer: null, busy: false,
  files: new Map(), osList: null,
  img: { tab: "PRIVATE_IMAGE", q: "", platform: "", state: "", os: "", offset: 0, limit: 20, selected: new Set() },
  ins: { offset: 0, limit: 20, selected: new Set() },
};
const TABS = [["PUBLIC_IMAGE", "Public"], ["PRIVATE_IMAGE", "Custom"], ["SHARED_IMAGE", "Shared"]];
const IMAGE_STATES = ["NORMAL", "IMPORTING", "IMPORTFAILED", "CREATING", "CREATEFAILED", "SYNCING"];
const BUSY_STATES = new Set(["IMPORTING", "CREATING", "SYNCING"]);
const ID_RE = /^img-[a-z0-9]{8}$/;
const ACCOUNT_RE = /^\d{1,20}$/;

function describe(e) {
  return e instanceof ApiError ? `${e.code}: ${e.message}` : String(e && e.message ? e.message : e);
}

function toast(msg) {
  $("toast").textContent = msg;
  clearTimeout(toast.t);
  toast.t = setTimeout(() => ($("toast").textContent = ""), 5000);
}

/** A CVM call in the current region, refusing once the console session has expired. */
async function api(action, params = {}, region = app.region) {
  if (Date.now() >= app.expiresAt) {
    await signOut("Your console session expired; sign in again.");
    throw new ApiError("AuthFailure.SessionExpired", "The console session expired.");
  }
  return call(app.cred, action, params, region);
}

// ------------------------------------------------------------------------------------------ sign-in

function showSignIn(message = "") {
  document.title = "Sign in · Stratus console";
  $("top").hidden = true;
  $("ops").hidden = true;
  document.querySelector(".layout").classList.add("signed-out");
  const sid = h("input", { name: "secret-id", autocomplete: "username", spellcheck: "false", required: true });
  const skey = h("input", { name: "secret-key", type: "password", autocomplete: "current-password", required: true });
  const err = h("p", { class: "error", role: "alert", id: "signin-error" }, message);
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "card signin", novalidate: true, "aria-labelledby": "signin-title",
    onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = "";
      setInvalid(sid, sid.value.trim() ? "" : "Enter your SecretId (it starts with AKID).");
      setInvalid(skey, skey.value ? "" : "Enter your SecretKey.");
      if (!sid.value.trim() || !skey.value) return;
      button.disabled = true;
      try {
        const cred = { secretId: sid.value.trim(), key: await rootKey(skey.value) };
        skey.value = "";
        const r = await call(cred, "DescribeRegions");
        const s = { ...cred, expiresAt: Date.now() + session.SESSION_HOURS * 3600e3, region: null };
        await session.save(s);
        await enter(s, r.RegionSet);
      } catch (ex) {
        err.textContent = ex instanceof ApiError && ex.isAuth
          ? `Sign-in refused (${ex.code}): ${ex.message}` : `Sign-in failed: ${describe(ex)}`;
        skey.focus();
      } finally {
        button.disabled = false;
      }
    } },
  h("h1", { id: "signin-title" }, "Sign in to Stratus"),
  h("p", { class: "muted" }, "Use an API key pair (made on the server with ", h("code", {}, "stratus account create"),
    "). The SecretKey never leaves this browser: requests are signed here."),
  err, field("SecretId", sid), field("SecretKey", skey), button);
  replace($("view"), form);
  sid.focus();
}

async function signOut(message = "", { forget = false } = {}) {
  clearInterval(app.timer);
  if (forget && app.cred) {
    // Signing out on purpose also leaves no trace of the work on this browser (a shared computer).
    localStorage.removeItem(`stratus.ops.${app.cred.secretId}`);
    localStorage.removeItem("stratus.uploads");
  }
  app.cred = null;
  app.refresh = null;
  await session.clear();
  if (location.hash) history.replaceState(null, "", location.pathname);
  const dlg = $("dialog");
  if (dlg.open) dlg.close();
  showSignIn(message);
}

async function enter(s, regionSet = null) {
  app.cred = { secretId: s.secretId, key: s.key };
  app.expiresAt = s.expiresAt;
  app.regions = regionSet || (await api("DescribeRegions")).RegionSet;
  const names = app.regions.map((r) => r.Region);
  const saved = localStorage.getItem("stratus.region");
  app.region = names.includes(saved) ? saved : names[0];
  document.querySelector(".layout").classList.remove("signed-out");
  $("top").hidden = false;
  $("ops").hidden = false;
  $("who").textContent = `Key ${s.secretId.slice(0, 8)}…`;
  $("who").title = s.secretId;
  replace($("region"), app.regions.map((r) =>
    h("option", { value: r.Region, selected: r.Region === app.region }, `${r.RegionName} (${r.Region})`)));
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
  $("foot").textContent = `Times are in your time zone (${tz}). This console forgets your key at ` +
    `${new Date(s.expiresAt).toLocaleTimeString()} or when you sign out.`;
  app.ops = new Operations(s.secretId, renderOps);
  for (const op of app.ops.list) {
    // An upload whose page went away stopped with it: offer to resume (the server kept what arrived).
    if (op.kind === "upload" && op.state === "UPLOADING" && !app.files.has(op.id)) {
      Object.assign(op, { state: "INTERRUPTED", error: "The page was closed or reloaded during the upload." });
    }
  }
  app.ops.save();
  renderOps(app.ops.list);
  clearInterval(app.timer);
  app.timer = setInterval(tick, 2000);
  route();
}

async function tick() {
  if (app.busy || !app.cred) return;
  app.busy = true;
  try {
    await app.ops.poll(app.cred);
    if (app.refresh) await app.refresh();
  } catch (e) {
    if (!(e instanceof ApiError && e.isAuth)) console.warn("refresh failed", e);
  } finally {
    app.busy = false;
  }
}

// ------------------------------------------------------------------------------------------ routing

function route() {
  if (!app.cred) return;
  const hash = location.hash || "#/images";
  app.refresh = null;
  for (const [id, prefix] of [["nav-images", "#/images"], ["nav-instances", "#/instances"]]) {
    if (hash.startsWith(prefix)) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
  const m = hash.match(/^#\/images\/(img-[a-z0-9]+)$/);
  if (m) return imageView(m[1]);
  if (hash.startsWith("#/instances")) return instancesView();
  return imagesView();
}

function dialog(title, content, { submitLabel, danger = false, onSubmit }) {
  const dlg = $("dialog");
  const err = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel);
  const form = h("form", { novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = "";
    submit.disabled = true;
    try {
      if ((await onSubmit({ err })) !== false) dlg.close();
    } catch (ex) {
      err.textContent = describe(ex);
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", { id: "dialog-title" }, title), content, err,
  h("div", { class: "buttons" }, h("button", { type: "button", onclick: () => dlg.close() }, "Cancel"), submit));
  replace(dlg, form);
  dlg.showModal();
  // A confirmation starts on Cancel, so Enter alone never deletes; a form starts on its first field.
  const first = danger && !form.querySelector("input, select, textarea")
    ? form.querySelector(".buttons button[type=button]")
    : form.querySelector("input:not([type=hidden]), select, textarea, button[type=submit]");
  if (first) first.focus();
  return dlg;
}

let toolSeq = 0;
/** A compact labelled control for a toolbar (label above, tied by for/id). */
function tool(label, control) {
  control.id = control.id || `t${++toolSeq}`;
  return h("div", { class: "tool" }, h("label", { for: control.id }, label), control);
}

function check(control, ok, message) {
  setInvalid(control, ok ? "" : message);
  return ok;
}

// ------------------------------------------------------------------------------------------ images list

function imageFilters() {
  const st = app.img;
  const f = [{ Name: "image-type", Values: [st.tab] }];
  if (st.q) f.push({ Name: ID_RE.test(st.q) ? "image-id" : "image-name", Values: [st.q] });
  if (st.platform) f.push({ Name: "platform", Values: [st.platform] });
  if (st.state) f.push({ Name: "image-state", Values: [st.state] });
  if (st.os) f.push({ Name: "os-type", Values: [st.os] });
  return f;
}

async function osList() {
  if (!app.osList) app.osList = (await api("DescribeImportImageOs")).ImportImageOsVersionSet;
  return app.osList;
}

function stateCell(img) {
  const busy = BUSY_STATES.has(img.ImageState);
  const pct = img.ImageState === "SYNCING" ? img.SyncPercent : img.ImageProgress;
  return [
    h("span", { class: stateClass(img.ImageState) }, img.ImageState),
    busy ? h("div", {}, h("progress", { max: 100, value: pct || 0, "aria-label": `${img.ImageName} progress` }),
      ` ${Math.round(pct || 0)}%`) : null,
    img.ImageStateReason ? h("div", { class: "reason" }, img.ImageStateReason) : null,
  ];
}

async function imagesView() {
  document.title = "Images · Stratus console";
  const st = app.img;
  const view = $("view");
  const tbody = h("tbody");
  const summary = h("span", { class: "muted", "aria-live": "polite" });
  const prev = h("button", { type: "button", onclick: () => { st.offset = Math.max(0, st.offset - st.limit); load(); } },
    "Previous page");
  const next = h("button", { type: "button", onclick: () => { st.offset += st.limit; load(); } }, "Next page");
  const del = h("button", { type: "button", class: "danger", disabled: true, onclick: () => confirmDelete([...st.selected]) },
    "Delete selected");
  const own = st.tab === "PRIVATE_IMAGE";
  const q = h("input", { type: "search", value: st.q, placeholder: "name or img-…" });
  const platform = h("input", { value: st.platform, placeholder: "e.g. Ubuntu", size: 12 });
  const state = h("select", {}, h("option", { value: "" }, "Any"),
    IMAGE_STATES.map((x) => h("option", { value: x, selected: x === st.state }, x)));
  const os = h("select", {}, h("option", { value: "" }, "Any"));
  osList().then((l) => l.forEach((o) => os.append(h("option", { value: o.OsName, selected: o.OsName === st.os }, o.OsName))))
    .catch(() => {});
  const apply = (e) => {
    e.preventDefault();
    Object.assign(st, { q: q.value.trim(), platform: platform.value.trim(), state: state.value, os: os.value, offset: 0 });
    load();
  };
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Image type" },
    TABS.map(([type, label]) => h("button", { type: "button", role: "tab", id: `tab-${type}`,
      "aria-selected": String(type === st.tab), tabindex: type === st.tab ? "0" : "-1",
      onclick: () => { Object.assign(st, { tab: type, offset: 0 }); st.selected.clear(); imagesView(); },
      onkeydown: (e) => {
        const i = TABS.findIndex(([t]) => t === type);
        const j = e.key === "ArrowRight" ? (i + 1) % 3 : e.key === "ArrowLeft" ? (i + 2) % 3 : -1;
        if (j >= 0) { Object.assign(st, { tab: TABS[j][0], offset: 0 }); imagesView().then(() => $(`tab-${TABS[j][0]}`).focus()); }
      } }, label)));
  const panel = h("div", { role: "tabpanel", "aria-labelledby": `tab-${st.tab}` },
    h("form", { class: "toolbar", role: "search", onsubmit: apply },
      tool("Search", q), tool("Platform", platform), tool("State", state), tool("OS", os),
      h("button", { type: "submit" }, "Apply"),
      h("span", { class: "spacer" }),
      own ? h("button", { type: "button", class: "primary", onclick: importDialog }, "Import image") : null,
      own ? del : null),
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "Images" },
      h("thead", {}, h("tr", {}, own ? h("th", {}, h("span", { class: "muted" }, "Select")) : null, h("th", {}, "Name"),
        h("th", {}, "State"), h("th", { class: "hide-narrow" }, "OS"), h("th", {}, "Size"),
        h("th", { class: "hide-narrow" }, "Created"))),
      tbody)),
    h("div", { class: "pager" }, summary, prev, next));
  replace(view, h("h1", {}, `Images in ${app.region}`), tabs, panel);
  let last = "";

  function rows(set) {
    return set.map((img) => h("tr", { "data-id": img.ImageId },
      own ? h("td", {}, h("input", { type: "checkbox", "aria-label": `Select ${img.ImageName} (${img.ImageId})`,
        "data-key": `sel-${img.ImageId}`, checked: st.selected.has(img.ImageId),
        onchange: (e) => { e.target.checked ? st.selected.add(img.ImageId) : st.selected.delete(img.ImageId); sync(); } })) : null,
      h("td", {}, h("a", { href: `#/images/${img.ImageId}`, "data-key": `a-${img.ImageId}` }, img.ImageName),
        h("span", { class: "id" }, img.ImageId)),
      h("td", {}, stateCell(img)),
      h("td", { class: "hide-narrow" }, img.OsName),
      h("td", {}, `${img.ImageSize} GiB`),
      h("td", { class: "hide-narrow" }, localTime(img.CreatedTime))));
  }

  function sync() {
    del.disabled = st.selected.size === 0;
    del.textContent = st.selected.size ? `Delete selected (${st.selected.size})` : "Delete selected";
  }

  async function load() {
    let r;
    try {
      r = await api("DescribeImages", { Filters: imageFilters(), Offset: st.offset, Limit: st.limit });
    } catch (e) {
      replace(tbody, h("tr", {}, h("td", { colspan: 6 }, h("p", { class: "error", role: "alert" }, describe(e)))));
      return;
    }
    const sig = JSON.stringify(r.ImageSet) + r.TotalCount + st.offset;
    if (sig === last) return;
    last = sig;
    const focusKey = document.activeElement?.getAttribute?.("data-key");
    const filtered = st.q || st.platform || st.state || st.os;
    if (!r.ImageSet.length) {
      replace(tbody, h("tr", {}, h("td", { colspan: 6 }, emptyImages(filtered))));
    } else {
      replace(tbody, rows(r.ImageSet));
    }
    const from = r.TotalCount ? st.offset + 1 : 0;
    summary.textContent = `${from}–${st.offset + r.ImageSet.length} of ${r.TotalCount}`;
    prev.disabled = st.offset === 0;
    next.disabled = st.offset + st.limit >= r.TotalCount;
    for (const id of [...st.selected]) if (!r.ImageSet.some((i) => i.ImageId === id)) st.selected.delete(id);
    sync();
    if (focusKey) view.querySelector(`[data-key="${focusKey}"]`)?.focus();
  }

  function emptyImages(filtered) {
    if (filtered) {
      return h("div", { class: "empty" }, h("h2", {}, "No image matches"),
        h("p", {}, "Change the search or the filters."),
        h("button", { type: "button", onclick: () => { Object.assign(st, { q: "", platform: "", state: "", os: "", offset: 0 }); imagesView(); } },
          "Clear search and filters"));
    }
    if (st.tab === "PRIVATE_IMAGE") {
      return h("div", { class: "empty" }, h("h2", {}, `No custom images in ${app.region} yet`),
        h("p", {}, "Start by importing a disk image (QCOW2, RAW, VMDK or VHD) from a URL or from a file on this " +
          "computer. Once it is NORMAL you can launch instances from it, copy it to other regions and share it."),
        h("button", { type: "button", class: "primary", onclick: importDialog }, "Import your first image"));
    }
    if (st.tab === "SHARED_IMAGE") {
      return h("div", { class: "empty" }, h("h2", {}, "Nothing is shared with you here"),
        h("p", {}, "When another account shares an image with yours in this region, it appears here."));
    }
    return h("div", { class: "empty" }, h("h2", {}, "No public images in this region"),
      h("p", {}, "Operators publish public images. Look in the Custom tab for your own."));
  }

  app.refresh = load;
  await load();
}

// ------------------------------------------------------------------------------------------ image forms

async function importDialog() {
  const oses = await osList();
  const srcUrl = h("input", { type: "radio", name: "src", value: "url", checked: true });
  const srcFile = h("input", { type: "radio", name: "src", value: "file" });
  const url = h("input", { type: "url", placeholder: "https://example.com/disk.qcow2" });
  const file = h("input", { type: "file" });
  const name = h("input", { autocomplete: "off" });
  const osType = h("select", {}, oses.map((o) => h("option", { value: o.OsName }, o.OsName)));
  const osVersion = h("select");
  const arch = h("select");
  const fmt = h("select", {}, h("option", { value: "" }, "Detect"), ["QCOW2", "RAW", "VMDK", "VHD"].map((f) => h("option", { value: f }, f)));
  const desc = h("textarea", { rows: 2 });
  const fillOs = () => {
    const o = oses.find((x) => x.OsName === osType.value) || oses[0];
    replace(osVersion, o.OsVersions.map((v) => h("option", { value: v }, v)));
    replace(arch, o.Architecture.map((v) => h("option", { value: v }, v)));
  };
  osType.addEventListener("change", fillOs);
  const pref = oses.find((o) => o.OsName === "Ubuntu");
  if (pref) osType.value = "Ubuntu";
  fillOs();
  const urlField = field("Image URL", url, "http(s) URL of a QCOW2, RAW, VMDK or VHD file the server can reach.");
  const fileField = field("Disk image file", file, "Uploaded in resumable pieces; you can close the dialog.");
  const fmtField = field("Format", fmt);
  const showSrc = () => {
    urlField.hidden = !srcUrl.checked;
    fileField.hidden = fmtField.hidden = srcUrl.checked;
  };
  srcUrl.addEventListener("change", showSrc);
  srcFile.addEventListener("change", showSrc);
  file.addEventListener("change", () => {
    if (file.files[0] && !name.value) name.value = file.files[0].name.replace(/\.[^.]+$/, "").slice(0, 60);
  });
  showSrc();
  dialog("Import an image", [
    h("fieldset", { class: "checks" }, h("legend", {}, "Source"),
      h("label", {}, srcUrl, "From a URL"), h("label", {}, srcFile, "Upload a file")),
    urlField, fileField, fmtField,
    field("Name", name, "Up to 60 characters, unique in this region."),
    h("div", { class: "row" }, field("OS", osType), field("OS version", osVersion), field("Architecture", arch)),
    field("Description (optional)", desc),
  ], {
    submitLabel: "Import",
    onSubmit: async () => {
      const fromUrl = srcUrl.checked;
      let ok = check(name, name.value.trim() && name.value.length <= 60, "Give a name of 1 to 60 characters.");
      ok = check(desc, desc.value.length <= 256, "At most 256 characters.") && ok;
      if (fromUrl) ok = check(url, /^https?:\/\/[^\s/]+\S*$/i.test(url.value.trim()), "Enter an http:// or https:// URL.") && ok;
      else ok = check(file, file.files.length === 1, "Choose a disk image file.") && ok;
      if (!ok) return false;
      const params = { ImageName: name.value.trim(), OsType: osType.value, OsVersion: osVersion.value,
        Architecture: arch.value };
      if (desc.value) params.ImageDescription = desc.value;
      if (fromUrl) {
        const r = await api("ImportImage", { ...params, ImageUrl: url.value.trim() });
        app.ops.add({ kind: "import", label: `Import ${params.ImageName}`, imageId: r.ImageId, region: app.region });
        toast(`Importing ${params.ImageName} as ${r.ImageId}`);
        app.refresh?.();
        return true;
      }
      const f = file.files[0];
      const op = app.ops.add({ kind: "upload", label: `Upload ${f.name}`, region: app.region, params,
        format: fmt.value || null, fileName: f.name, size: f.size, mtime: f.lastModified, state: "UPLOADING" });
      startUpload(op, f);
      return true;
    },
  });
}

async function startUpload(op, file) {
  app.files.set(op.id, file);
  app.ops.update(op.id, { state: "UPLOADING", error: "" });
  try {
    const id = await uploadFile(app.cred, file, { format: op.format, onProgress: (p) => app.ops.update(op.id, {
      progress: (100 * p.received) / Math.max(1, p.size), received: p.received, speed: p.bytesPerSecond,
      uploadId: p.uploadId, resumedAt: p.resumedAt }) });
    const r = await api("ImportImage", { ...op.params, ImageUrl: `upload://${id}` }, op.region);
    forgetId(id);
    app.files.delete(op.id);
    app.ops.update(op.id, { kind: "import", label: `Import ${op.params.ImageName}`, imageId: r.ImageId,
      state: "IMPORTING", progress: 0, speed: null });
    toast(`Uploaded ${file.name}; importing as ${r.ImageId}`);
  } catch (e) {
    app.ops.update(op.id, { state: "INTERRUPTED", error: describe(e) });
  }
}

function resumeWithFile(op, file) {
  if (file.name !== op.fileName || file.size !== op.size || file.lastModified !== op.mtime) {
    app.ops.update(op.id, { error: `That is not ${op.fileName} (${bytes(op.size)}): choose the same file to resume.` });
    return;
  }
  startUpload(op, file);
}

function confirmDelete(ids, names = new Map()) {
  const list = h("ul", { class: "named" }, ids.map((id) => {
    const row = document.querySelector(`tr[data-id="${id}"] a`);
    return h("li", {}, h("strong", {}, names.get(id) || row?.textContent || id), ` (${id})`);
  }));
  dialog(ids.length === 1 ? "Delete this image?" : `Delete these ${ids.length} images?`, [
    h("p", {}, "This deletes the following and their stored disks. It can't be undone:"), list,
  ], {
    submitLabel: ids.length === 1 ? "Delete image" : `Delete ${ids.length} images`, danger: true,
    onSubmit: async () => {
      await api("DeleteImages", { ImageIds: ids });
      ids.forEach((id) => app.img.selected.delete(id));
      toast(`Deleted ${ids.join(", ")}`);
      if (location.hash.startsWith("#/images/")) location.hash = "#/images";
      else imagesView();
    },
  });
}

function modifyDialog(img) {
  const name = h("input", { value: img.ImageName });
  const desc = h("textarea", { rows: 3 }, img.ImageDescription || "");
  dialog("Rename or describe", [field("Name", name, "Up to 60 characters."), field("Description", desc, "Up to 256 characters.")], {
    submitLabel: "Save",
    onSubmit: async () => {
      let ok = check(name, name.value.trim() && name.value.length <= 60, "Give a name of 1 to 60 characters.");
      ok = check(desc, desc.value.length <= 256, "At most 256 characters.") && ok;
      if (!ok) return false;
      await api("ModifyImageAttribute", { ImageId: img.ImageId, ImageName: name.value.trim(), ImageDescription: desc.value });
      toast("Saved");
      imageView(img.ImageId);
    },
  });
}

function b64(text) {
  const bytesArr = new TextEncoder().encode(text);
  let bin = "";
  bytesArr.forEach((b) => (bin += String.fromCharCode(b)));
  return btoa(bin);
}

async function launchDialog(img) {
  const [zones, types] = await Promise.all([api("DescribeZones"), api("DescribeInstanceTypeConfigs")]);
  const zone = h("select", {}, zones.ZoneSet.map((z) => h("option", { value: z.Zone }, z.ZoneName || z.Zone)));
  const type = h("select");
  const fillTypes = () => replace(type, types.InstanceTypeConfigSet
    .filter((t) => t.Zone === zone.value && (!img.Architecture || t.Architecture === img.Architecture))
    .map((t) => h("option", { value: t.InstanceType }, `${t.InstanceType} (${t.CPU} vCPU, ${t.Memory} GiB)`)));
  zone.addEventListener("change", fillTypes);
  fillTypes();
  const count = h("input", { type: "number", min: 1, max: 500, value: 1, inputmode: "numeric" });
  const name = h("input", { placeholder: "web-{R:1}" });
  const user = h("textarea", { rows: 4, placeholder: "#cloud-config\n…" });
  dialog(`Launch from ${img.ImageName}`, [
    h("div", { class: "row" }, field("Zone", zone), field("Instance type", type)),
    h("div", { class: "row" }, field("Count", count, "1 to 500."),
      field("Name (optional)", name, "{R:1} numbers the instances.")),
    field("User data (optional)", user, "cloud-init user data, up to 16 KiB once base64-encoded."),
  ], {
    submitLabel: "Launch",
    onSubmit: async () => {
      const n = Number(count.value);
      let ok = check(count, Number.isInteger(n) && n >= 1 && n <= 500, "Enter a whole number from 1 to 500.");
      ok = check(type, !!type.value, "No instance type runs this image's architecture in this zone.") && ok;
      ok = check(name, name.value.length <= 128, "At most 128 characters.") && ok;
      const ud = user.value ? b64(user.value) : "";
      ok = check(user, ud.length <= 16384, `User data is ${ud.length} bytes in base64; the limit is 16384.`) && ok;
      if (!ok) return false;
      const params = { ImageId: img.ImageId, Placement: { Zone: zone.value }, InstanceType: type.value, InstanceCount: n };
      if (name.value) params.InstanceName = name.value;
      if (ud) params.UserData = ud;
      const r = await api("RunInstances", params);
      app.ops.add({ kind: "launch", label: `Launch ${n} from ${img.ImageName}`, instanceIds: r.InstanceIdSet, region: app.region });
      toast(`Launching ${r.InstanceIdSet.join(", ")}`);
    },
  });
}

function copyDialog(img) {
  const boxes = app.regions.filter((r) => r.Region !== app.region).map((r) =>
    h("input", { type: "checkbox", value: r.Region, "aria-label": r.Region }));
  const fs = h("fieldset", { class: "checks", "aria-describedby": "copy-err" }, h("legend", {}, "Destination regions"),
    boxes.map((b) => h("label", {}, b, b.value)));
  const err = h("span", { class: "invalid", id: "copy-err", "aria-live": "polite" });
  const name = h("input", { placeholder: img.ImageName });
  dialog(`Copy ${img.ImageName} to other regions`, [fs, err, field("Name in the destinations (optional)", name)], {
    submitLabel: "Copy",
    onSubmit: async () => {
      const dest = boxes.filter((b) => b.checked).map((b) => b.value);
      err.textContent = dest.length ? "" : "Choose at least one region.";
      if (!dest.length || !check(name, name.value.length <= 60, "At most 60 characters.")) return false;
      const params = { ImageIds: [img.ImageId], DestinationRegions: dest, ImageSetRequired: true };
      if (name.value) params.ImageName = name.value;
      const r = await api("SyncImages", params);
      for (const c of r.ImageSet || []) {
        app.ops.add({ kind: "copy", label: `Copy ${img.ImageName} → ${c.Region}`, imageId: c.ImageId, region: c.Region,
          state: "SYNCING" });
      }
      toast(`Copying to ${dest.join(", ")}`);
    },
  });
}

function exportDialog(img) {
  const fmt = h("select", {}, ["QCOW2", "RAW", "VMDK", "VHD"].map((f) => h("option", { value: f }, f)));
  const bucket = h("input", { value: "stratus-exports" });
  const prefix = h("input", { placeholder: "optional" });
  const rootOnly = h("input", { type: "checkbox" });
  dialog(`Export ${img.ImageName}`, [
    h("div", { class: "row" }, field("Format", fmt), field("Bucket", bucket, "An export bucket of this region.")),
    field("File name prefix (optional)", prefix),
    img.SnapshotSet.length > 1 ? h("label", {}, rootOnly, " System disk only") : null,
  ], {
    submitLabel: "Export",
    onSubmit: async () => {
      if (!check(bucket, bucket.value.trim() !== "", "Name the bucket.")) return false;
      if (!check(prefix, /^[A-Za-z0-9._-]*$/.test(prefix.value), "Letters, digits, '.', '_' and '-' only.")) return false;
      const params = { ImageIds: [img.ImageId], ExportFormat: fmt.value, BucketName: bucket.value.trim() };
      if (prefix.value) params.FileNamePrefixList = [prefix.value];
      if (rootOnly.checked) params.OnlyExportRootDisk = true;
      const r = await api("ExportImages", params);
      app.ops.add({ kind: "export", label: `Export ${img.ImageName} (${fmt.value})`, taskId: r.TaskId,
        cosPaths: r.CosPaths, bucket: params.BucketName, region: app.region });
      toast(`Exporting ${img.ImageId}; the download link appears in Operations`);
    },
  });
}

async function download(op, cosPath) {
  const key = cosPath.replace(/^\/+/, "");
  try {
    const resp = await data(app.cred, "GET", `/buckets/${op.bucket}/${key}`, { region: op.region, raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: key.split("/").pop(), hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    app.ops.update(op.id, { error: describe(e) });
  }
}

// ------------------------------------------------------------------------------------------ image page

function lineage(img) {
  const nodes = [];
  if (img.SourceUrl) nodes.push(["Imported from", img.SourceUrl]);
  if (img.SourceImageId) nodes.push([`Image in ${img.SourceRegion || app.region}`, img.SourceImageId]);
  if (img.SourceInstanceId) nodes.push(["Captured from instance", img.SourceInstanceId]);
  nodes.push([`This image (${app.region})`, img.ImageId]);
  const W = 220, H = 54, GAP = 40;
  const width = nodes.length * W + (nodes.length - 1) * GAP;
  const clip = (t) => (t.length > 32 ? t.slice(0, 30) + "…" : t);
  const svg = s("svg", { viewBox: `0 0 ${width} ${H + 4}`, width, height: H + 4, "aria-hidden": "true" },
    nodes.map(([label, text], i) => {
      const x = i * (W + GAP);
      return [
        i ? s("line", { x1: x - GAP, y1: H / 2 + 2, x2: x - 4, y2: H / 2 + 2 }) : null,
        i ? s("polygon", { points: `${x - 10},${H / 2 - 3} ${x - 2},${H / 2 + 2} ${x - 10},${H / 2 + 7}`, fill: "#7aa0d6" }) : null,
        s("rect", { x: x + 1, y: 2, width: W - 2, height: H - 2, rx: 8, class: i === nodes.length - 1 ? "self" : "" }),
        s("text", { x: x + 12, y: 22 }, label),
        s("text", { x: x + 12, y: 42, "font-family": "monospace" }, clip(text)),
      ];
    }));
  const words = nodes.map(([l, t]) => `${l}: ${t}`).join(" → ");
  return h("figure", { class: "lineage" }, svg, h("figcaption", { class: "muted" }, words));
}

async function imageView(id) {
  document.title = `${id} · Stratus console`;
  const view = $("view");
  let last = "";
  async function load() {
    let r;
    try {
      r = await api("DescribeImages", { ImageIds: [id] });
    } catch (e) {
      replace(view, h("p", { class: "error", role: "alert" }, describe(e)));
      return;
    }
    const img = r.ImageSet[0];
    if (!img) {
      replace(view, h("h1", {}, "Image not found"),
        h("p", {}, `${id} is not visible to you in ${app.region}: it may live in another region, or it was deleted.`),
        h("a", { href: "#/images" }, "Back to images"));
      return;
    }
    const own = img.ImageType === "PRIVATE_IMAGE";
    let shares = null;
    if (own && img.ImageState === "NORMAL") {
      try { shares = (await api("DescribeImageSharePermission", { ImageId: id })).SharePermissionSet; } catch { shares = []; }
    }
    const sig = JSON.stringify([img, shares]);
    if (sig === last) return;
    last = sig;
    const focusKey = document.activeElement?.getAttribute?.("data-key");
    const normal = img.ImageState === "NORMAL";
    const act = (label, fn, opts = {}) => h("button", { type: "button", "data-key": `act-${label}`, onclick: fn, ...opts }, label);
    replace(view,
      h("p", {}, h("a", { href: "#/images" }, "← Images")),
      h("h1", {}, img.ImageName, " ", h("span", { class: stateClass(img.ImageState) }, img.ImageState)),
      h("div", { class: "actions" },
        normal ? act("Launch instances", () => launchDialog(img), { class: "primary" }) : null,
        own ? act("Rename / describe", () => modifyDialog(img), { disabled: BUSY_STATES.has(img.ImageState) }) : null,
        own && normal ? act("Copy to regions", () => copyDialog(img)) : null,
        own && normal ? act("Export", () => exportDialog(img)) : null,
        own ? act("Delete", () => confirmDelete([img.ImageId], new Map([[img.ImageId, img.ImageName]])), { class: "danger" }) : null),
      h("section", { class: "card", "aria-labelledby": "h-state" }, h("h2", { id: "h-state" }, "State"), stateCell(img)),
      h("section", { class: "card", "aria-labelledby": "h-details" }, h("h2", { id: "h-details" }, "Details"),
        h("dl", { class: "props" },
          [["ID", img.ImageId], ["Type", img.ImageType], ["OS", img.OsName], ["Platform", img.Platform],
            ["Architecture", img.Architecture], ["Boot mode", img.BootMode], ["Size", `${img.ImageSize} GiB`],
            ["Created", localTime(img.CreatedTime)], ["Source", img.ImageSource], ["Owner", img.ImageCreator],
            ["Family", img.ImageFamily], ["Description", img.ImageDescription]]
            .filter(([, v]) => v !== null && v !== undefined && v !== "")
            .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
      h("section", { class: "card", "aria-labelledby": "h-disks" }, h("h2", { id: "h-disks" }, "Disks"),
        h("div", { class: "table-wrap" }, h("table", { "aria-label": "Disks" },
          h("thead", {}, h("tr", {}, ["Snapshot", "Use", "Virtual size", "Stored", "Imported as"].map((t) => h("th", {}, t)))),
          h("tbody", {}, (img.DiskSet || []).map((d) => h("tr", {}, h("td", {}, d.SnapshotId), h("td", {}, d.DiskUsage),
            h("td", {}, bytes(d.VirtualSize)), h("td", {}, bytes(d.StoredBytes)), h("td", {}, d.SourceFormat || ""))))))),
      h("section", { class: "card", "aria-labelledby": "h-lineage" }, h("h2", { id: "h-lineage" }, "Lineage"), lineage(img)),
      own ? sharesCard(img, shares) : null);
    if (focusKey) view.querySelector(`[data-key="${focusKey}"]`)?.focus();
  }
  app.refresh = load;
  replace(view, h("p", { class: "loading" }, "Loading…"));
  await load();
}

function sharesCard(img, shares) {
  const input = h("input", { placeholder: "e.g. 210989759100, 310989759101", "data-key": "share-input" });
  const err = h("p", { class: "error", role: "alert" });
  const normal = img.ImageState === "NORMAL";
  const submit = async (e) => {
    e.preventDefault();
    err.textContent = "";
    const ids = input.value.split(/[\s,]+/).filter(Boolean);
    if (!check(input, ids.length && ids.every((x) => ACCOUNT_RE.test(x)), "Enter one or more numeric account IDs.")) return;
    try {
      await api("ModifyImageSharePermission", { ImageId: img.ImageId, AccountIds: ids, Permission: "SHARE" });
      toast(`Shared with ${ids.join(", ")}`);
      imageView(img.ImageId);
    } catch (ex) {
      err.textContent = describe(ex);
    }
  };
  const unshare = async (acc) => {
    try {
      await api("ModifyImageSharePermission", { ImageId: img.ImageId, AccountIds: [acc], Permission: "CANCEL" });
      toast(`No longer shared with ${acc}`);
      imageView(img.ImageId);
    } catch (ex) {
      err.textContent = describe(ex);
    }
  };
  return h("section", { class: "card", "aria-labelledby": "h-shares" }, h("h2", { id: "h-shares" }, "Shared with"),
    !normal ? h("p", { class: "muted" }, "An image can be shared once it is NORMAL.") : null,
    shares && shares.length ? h("ul", { "aria-label": "Accounts" }, shares.map((sp) => h("li", {},
      h("span", {}, `${sp.AccountId} `), h("span", { class: "muted" }, `since ${localTime(sp.CreatedTime)} `),
      h("button", { type: "button", "data-key": `unshare-${sp.AccountId}`, onclick: () => unshare(sp.AccountId) },
        `Unshare with ${sp.AccountId}`))))
      : normal ? h("p", { class: "muted" }, "Not shared with any account.") : null,
    normal ? h("form", { class: "toolbar", novalidate: true, onsubmit: submit }, field("Share with account IDs", input),
      h("button", { type: "submit" }, "Share")) : null,
    err);
}

// ------------------------------------------------------------------------------------------ instances

async function instancesView() {
  document.title = "Instances · Stratus console";
  const st = app.ins;
  const view = $("view");
  const tbody = h("tbody");
  const summary = h("span", { class: "muted" });
  let current = [];
  const sel = () => current.filter((i) => st.selected.has(i.InstanceId));
  const simple = (label, action, extra = {}) => h("button", { type: "button", "data-needs": "many", onclick: async () => {
    const ids = sel().map((i) => i.InstanceId);
    try {
      await api(action, { InstanceIds: ids, ...extra });
      toast(`${label}: ${ids.join(", ")}`);
      load(true);
    } catch (e) {
      errEl.textContent = describe(e);
    }
  } }, label);
  const errEl = h("p", { class: "error", role: "alert" });
  const one = (label, fn, cls) => h("button", { type: "button", "data-needs": "one", class: cls, onclick: () => fn(sel()[0]) }, label);
  const bar = h("div", { class: "toolbar", role: "toolbar", "aria-label": "Instance actions" },
    simple("Start", "StartInstances"), simple("Stop", "StopInstances"), simple("Reboot", "RebootInstances"),
    one("Reset to image…", resetDialog), one("Create image…", captureDialog), one("Console output", consoleDialog),
    h("button", { type: "button", class: "danger", "data-needs": "many", onclick: () => terminateDialog(sel()) }, "Terminate…"));
  const sync = () => {
    const n = sel().length;
    bar.querySelectorAll("button").forEach((b) => (b.disabled = b.dataset.needs === "one" ? n !== 1 : n === 0));
  };
  replace(view, h("h1", {}, `Instances in ${app.region}`), bar, errEl,
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "Instances" },
      h("thead", {}, h("tr", {}, h("th", {}, "Select"), h("th", {}, "Name"), h("th", {}, "State"), h("th", {}, "Image"),
        h("th", { class: "hide-narrow" }, "Type"), h("th", { class: "hide-narrow" }, "Zone"),
        h("th", { class: "hide-narrow" }, "Created"))), tbody)),
    h("div", { class: "pager" }, summary));
  let last = "";
  async function load(force = false) {
    let r;
    try {
      r = await api("DescribeInstances", { Offset: st.offset, Limit: st.limit });
    } catch (e) {
      errEl.textContent = describe(e);
      return;
    }
    current = r.InstanceSet;
    const sig = JSON.stringify(r.InstanceSet);
    if (sig === last && !force) return;
    last = sig;
    const focusKey = document.activeElement?.getAttribute?.("data-key");
    summary.textContent = `${r.InstanceSet.length} of ${r.TotalCount}`;
    if (!r.InstanceSet.length) {
      replace(tbody, h("tr", {}, h("td", { colspan: 7 }, h("div", { class: "empty" }, h("h2", {}, `No instances in ${app.region}`),
        h("p", {}, "Launch one from an image: open ", h("a", { href: "#/images" }, "Images"),
          ", pick a NORMAL image and choose Launch instances.")))));
    } else {
      replace(tbody, r.InstanceSet.map((i) => h("tr", { "data-id": i.InstanceId },
        h("td", {}, h("input", { type: "checkbox", "data-key": `sel-${i.InstanceId}`, "aria-label": `Select ${i.InstanceName} (${i.InstanceId})`,
          checked: st.selected.has(i.InstanceId),
          onchange: (e) => { e.target.checked ? st.selected.add(i.InstanceId) : st.selected.delete(i.InstanceId); sync(); } })),
        h("td", {}, i.InstanceName, h("span", { class: "id" }, i.InstanceId)),
        h("td", {}, h("span", { class: stateClass(i.InstanceState) }, i.InstanceState),
          i.InstanceStateReason ? h("div", { class: "reason" }, i.InstanceStateReason) : null),
        h("td", {}, h("a", { href: `#/images/${i.ImageId}` }, i.ImageId)),
        h("td", { class: "hide-narrow" }, i.InstanceType), h("td", { class: "hide-narrow" }, i.Placement?.Zone || ""),
        h("td", { class: "hide-narrow" }, localTime(i.CreatedTime)))));
    }
    sync();
    if (focusKey) view.querySelector(`[data-key="${focusKey}"]`)?.focus();
  }

  async function resetDialog(ins) {
    const imgs = await api("DescribeImages", { Limit: 100 });
    const pick = h("select", {}, imgs.ImageSet.filter((i) => i.ImageState === "NORMAL").map((i) =>
      h("option", { value: i.ImageId, selected: i.ImageId === ins.ImageId }, `${i.ImageName} (${i.ImageId})`)));
    dialog(`Reset ${ins.InstanceName}`, [h("p", {}, "The system disk is replaced by a fresh one from the image; data disks stay."),
      field("Image", pick)], {
      submitLabel: "Reset", danger: true,
      onSubmit: async () => {
        await api("ResetInstance", { InstanceId: ins.InstanceId, ImageId: pick.value });
        toast(`Resetting ${ins.InstanceId}`);
        load(true);
      },
    });
  }

  function captureDialog(ins) {
    const name = h("input");
    const disks = (ins.DataDisks || []).map((d) => d.DiskId).filter(Boolean);
    const withData = h("input", { type: "checkbox", checked: disks.length > 0, disabled: !disks.length });
    const force = h("input", { type: "checkbox" });
    dialog(`Create an image from ${ins.InstanceName}`, [field("Image name", name, "Up to 60 characters."),
      h("p", {}, h("label", {}, withData, ` Include the data disks${disks.length ? ` (${disks.join(", ")})` : " (none)"}`)),
      h("p", {}, h("label", {}, force, " Power the instance off during the capture"))], {
      submitLabel: "Create image",
      onSubmit: async () => {
        if (!check(name, name.value.trim() && name.value.length <= 60, "Give a name of 1 to 60 characters.")) return false;
        const params = { InstanceId: ins.InstanceId, ImageName: name.value.trim() };
        if (withData.checked && disks.length) params.DataDiskIds = disks;
        if (force.checked) params.ForcePoweroff = "true";
        const r = await api("CreateImage", params);
        app.ops.add({ kind: "capture", label: `Capture ${ins.InstanceName} → ${params.ImageName}`, imageId: r.ImageId,
          region: app.region, state: "CREATING" });
        toast(`Creating ${r.ImageId}`);
      },
    });
  }

  async function consoleDialog(ins) {
    const r = await api("GetInstanceConsoleOutput", { InstanceId: ins.InstanceId });
    const text = new TextDecoder().decode(Uint8Array.from(atob(r.Output || ""), (c) => c.charCodeAt(0)));
    const dlg = $("dialog");
    replace(dlg, h("h2", { id: "dialog-title" }, `Console of ${ins.InstanceName}`),
      h("pre", { class: "console", tabindex: "0", "aria-label": "Serial console output" },
        text || "(no output: instances of the disk driver have no serial console)"),
      h("div", { class: "buttons" }, h("button", { type: "button", onclick: () => dlg.close() }, "Close")));
    dlg.showModal();
  }

  function terminateDialog(list) {
    dialog(list.length === 1 ? "Terminate this instance?" : `Terminate these ${list.length} instances?`, [
      h("p", {}, "Their disks are deleted. This can't be undone:"),
      h("ul", { class: "named" }, list.map((i) => h("li", {}, h("strong", {}, i.InstanceName), ` (${i.InstanceId})`)))], {
      submitLabel: list.length === 1 ? "Terminate instance" : `Terminate ${list.length} instances`, danger: true,
      onSubmit: async () => {
        await api("TerminateInstances", { InstanceIds: list.map((i) => i.InstanceId) });
        list.forEach((i) => st.selected.delete(i.InstanceId));
        toast(`Terminating ${list.map((i) => i.InstanceId).join(", ")}`);
        load(true);
      },
    });
  }

  app.refresh = load;
  sync();
  await load();
}

// ------------------------------------------------------------------------------------------ operations panel

function renderOps(list) {
  $("ops-empty").hidden = list.length > 0;
  replace($("ops-list"), list.map((op) => {
    const pct = Math.round(op.progress || 0);
    const lines = [h("div", { class: "op-title" }, op.label),
      h("div", { class: "muted" }, `${op.region} · started ${localTime(op.started)}`),
      h("div", {}, h("span", { class: stateClass(op.state) }, op.state), op.stage ? ` ${op.stage}` : "")];
    if (!op.final) lines.push(h("div", {}, h("progress", { max: 100, value: pct, "aria-label": `${op.label} progress` }), ` ${pct}%`));
    if (op.kind === "upload" && op.size) {
      lines.push(h("div", { class: "muted" }, `${bytes(op.received || 0)} of ${bytes(op.size)}` +
        (op.speed ? ` · ${bytes(op.speed)}/s` : "") + (op.resumedAt ? ` · resumed at ${bytes(op.resumedAt)}` : "")));
    }
    if (op.error) lines.push(h("div", { class: "reason" }, op.error));
    if (op.kind === "upload" && op.state === "INTERRUPTED") {
      const file = app.files.get(op.id);
      if (file) lines.push(h("button", { type: "button", onclick: () => startUpload(op, file) }, `Resume ${op.fileName}`));
      else {
        const input = h("input", { type: "file", onchange: () => input.files[0] && resumeWithFile(op, input.files[0]) });
        lines.push(field(`Choose ${op.fileName} again to resume`, input));
      }
    }
    if (op.kind === "export" && op.state === "SUCCESS") {
      for (const p of op.cosPaths || []) {
        lines.push(h("button", { type: "button", onclick: () => download(op, p) }, `Download ${p.split("/").pop()}`));
      }
    }
    if (op.imageId && op.kind !== "upload") lines.push(h("div", {}, h("a", { href: `#/images/${op.imageId}` }, op.imageId)));
    if (op.final || op.state === "INTERRUPTED") {
      lines.push(h("button", { type: "button", "aria-label": `Dismiss ${op.label}`, onclick: () => {
        if (op.uploadId && op.state === "INTERRUPTED") forgetId(op.uploadId);
        app.ops.remove(op.id);
      } }, "Dismiss"));
    }
    return h("li", { "data-op": op.kind, "data-op-state": op.state }, lines);
  }));
}

// ------------------------------------------------------------------------------------------ boot

$("signout").addEventListener("click", () =>
  signOut("You signed out. Your key and your operations list were removed from this browser.", { forget: true }));
$("region").addEventListener("change", (e) => {
  app.region = e.target.value;
  localStorage.setItem("stratus.region", app.region);
  app.img.selected.clear();
  app.ins.selected.clear();
  app.img.offset = 0;
  // An image page belongs to one region: go back to the list of the new one.
  if (location.hash.startsWith("#/images/")) location.hash = "#/images";
  else route();
});
window.addEventListener("hashchange", route);
setAuthFailureHandler((err) => {
  if (app.cred) signOut(`The server refused your key (${err.code}): ${err.message} Sign in again.`);
});

(async () => {
  const s = await session.load();
  if (!s) showSignIn();
  else if (s.expired) showSignIn("Your console session expired; sign in again.");
  else await enter(s).catch((e) => showSignIn(describe(e)));
})();
