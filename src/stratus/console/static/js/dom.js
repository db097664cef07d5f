// A tiny DOM builder: every text goes in as a text node (never as HTML), so names and messages from
// the API can't inject markup; no inline styles or handlers (the CSP forbids both).

export function h(tag, attrs = {}, ...children) {
  const el = tag === "svg" || attrs.svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false || k === "svg") continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k in el && !(el instanceof SVGElement) && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function s(tag, attrs = {}, ...children) {
  return h(tag, { ...attrs, svg: true }, ...children);
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

export function stateClass(state) {
  if (["NORMAL", "RUNNING", "SUCCESS", "DONE"].includes(state)) return "state ok";
  if (/FAILED|TERMINAT/.test(state)) return "state bad";
  if (["STOPPED"].includes(state)) return "state";
  return "state busy";
}

let fieldSeq = 0;
/** A labelled form field: label, control, hint, and an error slot the control is described by. */
export function field(label, control, hint = "") {
  const id = control.id || `f${++fieldSeq}`;
  control.id = id;
  const err = h("span", { class: "invalid", id: `${id}-err`, "aria-live": "polite" });
  const hintEl = hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null;
  control.setAttribute("aria-describedby", [hintEl ? `${id}-hint` : "", `${id}-err`].join(" ").trim());
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl, err);
}

export function setInvalid(control, message) {
  const err = document.getElementById(`${control.id}-err`);
  if (err) err.textContent = message || "";
  if (message) control.setAttribute("aria-invalid", "true");
  else control.removeAttribute("aria-invalid");
}
