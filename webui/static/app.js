// The mcpd operators' UI: a page per area, each reading the admin API
// (/v1/...) as the logged-in operator. Nothing here is built: the files
// are served as they are, from the binary.
import { pages } from "./pages.js";

const state = { operator: null, csrf: null, timer: null, gen: 0 };

// h builds an element; strings become text nodes, never HTML.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// api calls the admin API; unsafe methods carry the CSRF token.
export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  const text = await res.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = text; } }
  if (!res.ok) {
    if (res.status === 401 && state.operator) { state.operator = null; route(); }
    throw new APIError(res.status, data && data.code, (data && data.error) || res.statusText);
  }
  return data;
}

export function flash(msg, kind = "ok") {
  const f = document.getElementById("flash");
  f.textContent = msg;
  f.className = kind;
  f.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { f.hidden = true; }, kind === "error" ? 8000 : 4000);
}

export const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "-");
export const badge = (s) => h("span", { class: "badge s-" + s }, s);

// Passkeys. The options are WebAuthn's JSON forms, which the browser
// turns into its objects, and the credential goes back as its JSON.
async function createPasskey(options) {
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey);
  const cred = await navigator.credentials.create({ publicKey });
  return cred.toJSON();
}

export async function getPasskey(options) {
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey);
  const cred = await navigator.credentials.get({ publicKey });
  return cred.toJSON();
}

async function post(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}), credentials: "same-origin" });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new APIError(res.status, data.code, data.error || res.statusText);
  return data;
}

function loggedIn(res) {
  state.operator = res.operator;
  state.csrf = res.csrf;
  location.hash = "#/cluster";
  route();
}

function loginPage(main) {
  const err = h("p", { class: "muted", id: "login-error" });
  main.append(h("div", { class: "card login" },
    h("h1", {}, "Operator login"),
    h("p", { class: "muted" }, "Log in with the passkey you enrolled."),
    h("button", { class: "primary", id: "login", onclick: async () => {
      err.textContent = "";
      try {
        const begin = await post("/ui/api/login/begin");
        const cred = await getPasskey(begin.options);
        loggedIn(await post("/ui/api/login/finish", cred));
      } catch (e) { err.textContent = e.message; }
    } }, "Log in with a passkey"),
    err,
    h("p", { class: "muted" }, "New here? ", h("a", { href: "#/enroll" }, "Enroll with an invite code"), "."),
  ));
}

function enrollPage(main) {
  const code = h("input", { id: "invite-code", class: "code", size: 32, placeholder: "XXXX-XXXX-XXXX-XXXX-XXXX-XXXX", autocomplete: "off" });
  const err = h("p", { class: "muted", id: "enroll-error" });
  main.append(h("div", { class: "card login" },
    h("h1", {}, "Enroll a passkey"),
    h("p", { class: "muted" }, "Enter the one-time code that 'mcpd operator invite NAME' printed."),
    h("div", { class: "row" }, code),
    h("button", { class: "primary", id: "enroll", onclick: async () => {
      err.textContent = "";
      try {
        const begin = await post("/ui/api/enroll/begin", { code: code.value });
        const cred = await createPasskey(begin.options);
        loggedIn(await post("/ui/api/enroll/finish", cred));
        flash("Passkey enrolled for " + begin.operator);
      } catch (e) { err.textContent = e.message; }
    } }, "Create passkey"),
    err,
    h("p", {}, h("a", { href: "#/login" }, "Back to login")),
  ));
}

async function logout() {
  try { await api("POST", "/ui/api/logout"); } catch (e) { /* the session may be gone already */ }
  state.operator = null;
  state.csrf = null;
  location.hash = "#/login";
  route();
}

// route renders the page the hash names and refreshes it every two
// seconds while it is shown.
async function route() {
  clearInterval(state.timer);
  // A render still in flight for the page shown before must not replace
  // this one when its answer arrives.
  const gen = ++state.gen;
  const main = document.getElementById("main");
  const [, name, ...rest] = (location.hash || "#/cluster").split("/");
  if (!state.operator) {
    try {
      const me = await fetch("/ui/api/session", { credentials: "same-origin" });
      if (me.ok) { const s = await me.json(); state.operator = s.operator; state.csrf = s.csrf; }
    } catch { /* offline: stay logged out */ }
    if (gen !== state.gen) return;
  }
  document.getElementById("nav").hidden = !state.operator;
  document.getElementById("logout").hidden = !state.operator;
  document.getElementById("who").textContent = state.operator ? state.operator : "";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + name);
  main.replaceChildren();
  if (!state.operator) {
    (name === "enroll" ? enrollPage : loginPage)(main);
    return;
  }
  const page = pages[name] || pages.cluster;
  const ctx = { args: rest.map(decodeURIComponent), main, state };
  const render = async () => {
    try {
      const view = await page(ctx);
      if (view && gen === state.gen) main.replaceChildren(view);
    } catch (e) {
      if (gen !== state.gen || (e instanceof APIError && e.status === 401)) return;
      main.replaceChildren(h("div", { class: "card" }, h("p", { class: "muted" }, "Could not load this page: " + e.message)));
    }
  };
  ctx.refresh = render;
  await render();
  // A refresh rebuilds the page: not while the operator types in it.
  const typing = () => ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName) && main.contains(document.activeElement);
  if (page.live !== false) state.timer = setInterval(() => { if (!typing()) render(); }, 2000);
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
