// The pages of the UI. Each is an async function of its context that
// answers the page's element; app.js calls it again every two seconds
// unless the page says live = false. State a page keeps across those
// refreshes (selections, open panels, filters) lives in ctx.
import { h, api, flash, fmtTime, badge, getPasskey } from "./app.js";

const enc = encodeURIComponent;
const table = (head, rows) => h("table", {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows));
const empty = (n, text) => h("tr", {}, h("td", { colspan: n, class: "muted" }, text));
const num = (v) => h("td", { class: "num" }, String(v ?? 0));
const json = (v) => h("pre", {}, typeof v === "string" ? v : JSON.stringify(v, null, 1));

async function act(fn, ok) {
  try { await fn(); if (ok) flash(ok); } catch (e) { flash(e.message, "error"); }
}

async function cluster() {
  const c = await api("GET", "/v1/cluster");
  return h("div", {},
    h("h1", {}, "Cluster"),
    h("p", { class: "muted" }, "Answered by ", h("b", {}, c.node), "; leader ", h("b", { id: "leader" }, c.leader || "none"), ". ",
      h("a", { href: "/v1/snapshot", download: `mcpd-${c.node}.snap`, id: "snapshot" }, "Download a snapshot"),
      " (a consistent copy of the cluster's state; check it with 'mcpd snapshot inspect', restore it with 'mcpd snapshot restore')"),
    table(["Node", "Address", "Role", "Suffrage", "Term", "Applied", "Commit", "Last contact", "Health"],
      (c.servers || []).map((s) => h("tr", {},
        h("td", {}, s.id), h("td", { class: "mono" }, s.address), h("td", {}, s.role || "-"), h("td", {}, s.suffrage),
        num(s.term), num(s.applied_index), num(s.commit_index), h("td", {}, s.last_contact || "-"),
        h("td", {}, s.healthy ? badge("healthy") : h("span", { class: "badge s-bad", title: s.reason || s.error || "" }, s.reason || s.error || "unhealthy")))),
    ));
}

async function agents() {
  const [p, ids] = await Promise.all([api("GET", "/v1/presence"), api("GET", "/v1/agents")]);
  const list = p.agents || [];
  return h("div", {},
    h("h1", {}, "Agents"),
    table(["Agent", "State", "Nodes", "Capabilities (inflight / max)", "Succeeded", "Failed", "Recent ok / failed", "Last active"],
      list.length ? list.map((a) => h("tr", {},
        h("td", {}, a.name), h("td", {}, badge(a.online ? "online" : "offline")), h("td", {}, (a.nodes || []).join(", ") || "-"),
        h("td", {}, (a.capabilities || []).map((c) => h("div", {}, `${c.name} ${c.inflight ?? 0} / ${c.max_inflight ?? "-"}`))),
        num(a.succeeded), num(a.failed), h("td", {}, `${a.recent_succeeded} / ${a.recent_failed}`), h("td", {}, fmtTime(a.last_active)),
      )) : empty(8, "No agent has registered capabilities yet.")),
    h("h2", {}, "Identities"),
    table(["Agent", "Algorithm", "Capabilities", "Created by", "Revoked"],
      (ids.agents || []).map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, a.alg), h("td", {}, (a.caps || a.capabilities || []).join(", ")),
        h("td", {}, a.created_by || "-"), h("td", {}, a.revoked ? `${fmtTime(a.revoked)} by ${a.revoked_by || "-"}` : "")))),
  );
}

async function queues(ctx) {
  if (ctx.args[0]) return queue(ctx, ctx.args[0]);
  const qs = await api("GET", "/v1/queues");
  return h("div", {},
    h("h1", {}, "Queues"),
    table(["Queue", "Ready", "Inflight", "Delayed", "Dead-lettered", "Consumers", "Enqueued"],
      qs.length ? qs.map((q) => h("tr", { "data-queue": q.name },
        h("td", {}, h("a", { href: "#/queues/" + enc(q.name) }, q.name)),
        h("td", { class: "num depth" }, String(q.ready)), num(q.inflight), num(q.delayed), num(q.dead_lettered), num(q.consumers), num(q.enqueued),
      )) : empty(7, "No queues yet.")),
  );
}

async function queue(ctx, name) {
  ctx.selected ||= new Set();
  ctx.open ||= {};
  const msgs = await api("GET", `/v1/queues/${enc(name)}/messages?limit=200`);
  const dead = msgs.filter((m) => m.dead);
  const redrive = async (seqs) => act(async () => {
    const r = await api("POST", `/v1/queues/${enc(name)}/redrive`, seqs ? { seqs } : {});
    ctx.selected.clear();
    flash(`Redrove ${r.moved ?? (r.seqs || []).length} message(s)`);
  });
  const del = (seq) => act(() => api("DELETE", `/v1/queues/${enc(name)}/messages/${seq}`), `Deleted message ${seq}`);
  const timeline = async (m) => {
    const id = m.dead ? `${m.dead.queue}/${m.dead.seq}` : `${name}/${m.seq}`;
    const r = await api("GET", `/v1/audit/search?id=${enc(id)}&limit=100`);
    ctx.open[m.seq] = r.entries || [];
  };
  const rows = msgs.map((m) => {
    const tl = ctx.open[m.seq];
    return [h("tr", { "data-seq": m.seq },
      h("td", {}, m.dead ? h("input", { type: "checkbox", checked: ctx.selected.has(m.seq), onchange: (e) => e.target.checked ? ctx.selected.add(m.seq) : ctx.selected.delete(m.seq) }) : ""),
      num(m.seq), h("td", {}, badge(m.dead ? "dead" : m.state)), num(m.attempts), h("td", {}, fmtTime(m.enqueued)), h("td", {}, m.holder || "-"),
      h("td", {}, m.dead ? h("span", {}, `from ${m.dead.queue}/${m.dead.seq} after ${m.dead.attempts} attempt(s): `, h("b", {}, m.dead.reason)) : "-"),
      h("td", {}, json(m.envelope)),
      h("td", {},
        h("button", { class: "timeline", onclick: async () => { if (tl) delete ctx.open[m.seq]; else await act(() => timeline(m)); ctx.refresh(); } }, tl ? "Hide timeline" : "Timeline"),
        m.dead ? h("button", { onclick: async () => { await redrive([m.seq]); ctx.refresh(); } }, "Redrive") : "",
        h("button", { class: "danger", onclick: async () => { if (confirm(`Delete message ${m.seq} of ${name}?`)) { await del(m.seq); ctx.refresh(); } } }, "Delete"))),
    tl ? h("tr", { class: "timeline-row" }, h("td", { colspan: 9 },
      h("b", {}, "Deliveries"),
      h("ul", { class: "timeline", "data-timeline": m.seq }, (m.timeline || []).length
        ? m.timeline.map((e) => h("li", {}, `${fmtTime(e.at_ms)} ${e.event}${e.attempt ? " (attempt " + e.attempt + ")" : ""}${e.who ? " " + e.who : ""}${e.detail ? ": " + e.detail : ""}`))
        : h("li", { class: "muted" }, "No delivery history recorded.")),
      h("b", {}, "Audit log"),
      h("ul", { class: "timeline" }, tl.length
        ? tl.map((e) => h("li", {}, `${fmtTime(e.ts)} #${e.seq} ${e.kind} by ${e.actor || "the cluster"} on ${e.subject}: ${e.outcome}`))
        : h("li", { class: "muted" }, "No audit entries name this message.")))) : null];
  });
  return h("div", {},
    h("h1", {}, "Queue ", h("span", { class: "mono" }, name)),
    h("p", {}, h("a", { href: "#/queues" }, "← all queues")),
    dead.length ? h("div", { class: "row" },
      h("button", { class: "primary", id: "redrive-selected", onclick: async () => {
        if (!ctx.selected.size) { flash("Select the dead letters to redrive first", "error"); return; }
        await redrive([...ctx.selected]); ctx.refresh();
      } }, "Redrive selected"),
      h("button", { onclick: async () => { if (confirm(`Redrive every dead letter of ${name}?`)) { await redrive(null); ctx.refresh(); } } }, "Redrive all"),
      h("span", { class: "muted" }, `${dead.length} dead letter(s) shown`)) : "",
    table(["", "Seq", "State", "Attempts", "Enqueued", "Lease holder", "Dead letter", "Envelope", ""],
      msgs.length ? rows : empty(9, "This queue holds no messages.")),
  );
}

function dag(tasks) {
  // Lay the graph out in columns by depth: a task stands one column right
  // of its deepest dependency.
  const byID = new Map(tasks.map((t) => [t.id, t]));
  const depth = new Map();
  const d = (t, seen = new Set()) => {
    if (depth.has(t.id)) return depth.get(t.id);
    if (seen.has(t.id)) return 0;
    seen.add(t.id);
    const v = Math.max(-1, ...(t.deps || []).map((id) => (byID.has(id) ? d(byID.get(id), seen) : -1))) + 1;
    depth.set(t.id, v);
    return v;
  };
  tasks.forEach((t) => d(t));
  const cols = [];
  for (const t of tasks) (cols[depth.get(t.id)] ||= []).push(t);
  const W = 170, H = 46, GX = 60, GY = 18;
  const pos = new Map();
  cols.forEach((col, x) => col.forEach((t, y) => pos.set(t.id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + cols.length * (W + GX), height = 20 + Math.max(...cols.map((c) => c.length)) * (H + GY);
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, ...kids) => { const el = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); el.append(...kids); return el; };
  const svg = s("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}` });
  for (const t of tasks) for (const dep of t.deps || []) {
    const a = pos.get(dep), b = pos.get(t.id);
    if (a && b) svg.append(s("path", { d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}` }));
  }
  for (const t of tasks) {
    const p = pos.get(t.id);
    const label = (t.ref || t.id).slice(0, 24);
    svg.append(s("g", { class: "n-" + t.state, "data-task": t.id },
      s("rect", { x: p.x, y: p.y, width: W, height: H, rx: 5 }),
      s("text", { x: p.x + 8, y: p.y + 18 }, label),
      s("text", { x: p.x + 8, y: p.y + 35, fill: "#66707a" }, `${t.capability} · ${t.state}`)));
  }
  return svg;
}

async function decide(t, approve, reason) {
  if (!approve && !reason.trim()) {
    flash(`Say why ${t.id} is denied: the agents and the audit log see it`, "error");
    return;
  }
  await act(async () => {
    const begin = await api("POST", "/ui/api/reauth/begin", { task: t.id, approve });
    const assertion = await getPasskey(begin.options);
    await api("POST", `/ui/api/tasks/${enc(t.id)}/decide`, { approve, reason, assertion });
  }, `${approve ? "Approved" : "Denied"} ${t.id}`);
}

function approvals(held, ctx) {
  // The reasons typed survive the page's refreshes.
  ctx.reasons ||= {};
  return table(["Task", "Capability", "Intent", "Origin", "Chain", "Input", "Held since", "Decision"],
    held.length ? held.map((t) => h("tr", { "data-held": t.id },
      h("td", {}, h("a", { href: "#/tasks/" + enc(t.graph || t.id) }, t.id)), h("td", {}, t.capability), h("td", {}, t.intent || "-"),
      h("td", {}, t.origin), h("td", {}, (t.chain || []).join(" → ")), h("td", {}, json(t.input)), h("td", {}, fmtTime(t.held_since || t.created)),
      h("td", {},
        h("input", { class: "reason", placeholder: "reason (needed to deny)", value: ctx.reasons[t.id] || "",
          oninput: (e) => { ctx.reasons[t.id] = e.target.value; } }),
        h("div", { class: "row" },
          h("button", { class: "primary approve", onclick: async () => { await decide(t, true, ctx.reasons[t.id] || ""); ctx.refresh(); } }, "Approve"),
          h("button", { class: "danger deny", onclick: async () => { await decide(t, false, ctx.reasons[t.id] || ""); ctx.refresh(); } }, "Deny"))),
    )) : empty(8, "No task waits for approval."));
}

async function tasks(ctx) {
  if (ctx.args[0]) return graph(ctx, ctx.args[0]);
  const [held, roots] = await Promise.all([api("GET", "/v1/tasks?state=held&limit=200"), api("GET", "/v1/tasks?roots=1&limit=50")]);
  const counts = roots.counts || held.counts || {};
  return h("div", {},
    h("h1", {}, "Tasks"),
    h("div", { class: "row" }, Object.entries(counts).map(([k, v]) => h("span", {}, badge(k), " ", String(v)))),
    h("h2", {}, "Waiting for approval"),
    approvals(held.tasks || [], ctx),
    h("h2", {}, "Recent graphs"),
    table(["Graph", "Capability", "State", "Origin", "Intent", "Created"],
      (roots.tasks || []).length ? roots.tasks.map((t) => h("tr", {},
        h("td", {}, h("a", { href: "#/tasks/" + enc(t.graph || t.id) }, t.graph || t.id)), h("td", {}, t.capability), h("td", {}, badge(t.state)),
        h("td", {}, t.origin), h("td", {}, t.intent || "-"), h("td", {}, fmtTime(t.created)))) : empty(6, "No tasks yet.")),
  );
}

async function graph(ctx, id) {
  const g = await api("GET", "/v1/tasks/" + enc(id));
  const list = g.tasks || (g.task ? [g.task] : []);
  const held = list.filter((t) => t.state === "held");
  return h("div", {},
    h("h1", {}, "Graph ", h("span", { class: "mono" }, g.graph || id)),
    h("p", {}, h("a", { href: "#/tasks" }, "← all tasks")),
    h("div", { class: "card" }, dag(list)),
    held.length ? [h("h2", {}, "Waiting for approval"), approvals(held, ctx)] : "",
    h("h2", {}, "Tasks"),
    table(["Task", "Ref", "Capability", "State", "Agent", "Attempt", "Deps", "Output / error", "History"],
      list.map((t) => h("tr", { "data-task": t.id },
        h("td", { class: "mono" }, t.id), h("td", {}, t.ref), h("td", {}, t.capability), h("td", {}, badge(t.state)), h("td", {}, t.agent || "-"),
        num(t.attempt), h("td", {}, (t.deps || []).join(", ") || "-"), h("td", {}, t.error ? h("b", {}, t.error) : t.output ? json(t.output) : "-"),
        h("td", {}, h("ul", { class: "timeline" }, (t.history || []).map((e) => h("li", {}, `${fmtTime(e.at)} ${e.event}${e.agent ? " " + e.agent : ""}${e.detail ? ": " + e.detail : ""}`))))))),
  );
}

async function schedules(ctx) {
  const list = await api("GET", "/v1/schedules");
  const set = (name, what) => act(() => api(what === "delete" ? "DELETE" : "POST", `/v1/schedules/${enc(name)}${what === "delete" ? "" : "/" + what}`), `Schedule ${name}: ${what}`);
  ctx.hist ||= {};
  const rows = list.map((s) => [h("tr", {},
    h("td", {}, s.name), h("td", { class: "mono" }, s.cron + (s.tz ? ` (${s.tz})` : "")),
    h("td", {}, s.action.queue ? `enqueue to ${s.action.queue}` : `task ${s.action.capability}`), h("td", {}, s.paused ? badge("paused") : badge("ok")),
    h("td", {}, fmtTime(s.last_tick)), h("td", {}, s.next ? fmtTime(s.next) : "-"), num(s.fired), num(s.skipped),
    h("td", {},
      h("button", { onclick: async () => { await set(s.name, s.paused ? "resume" : "pause"); ctx.refresh(); } }, s.paused ? "Resume" : "Pause"),
      h("button", { onclick: async () => { if (ctx.hist[s.name]) delete ctx.hist[s.name]; else await act(async () => { ctx.hist[s.name] = await api("GET", `/v1/schedules/${enc(s.name)}/history`); }); ctx.refresh(); } }, "History"),
      h("button", { class: "danger", onclick: async () => { if (confirm(`Delete schedule ${s.name}?`)) { await set(s.name, "delete"); ctx.refresh(); } } }, "Delete"))),
    ctx.hist[s.name] ? h("tr", {}, h("td", { colspan: 9 }, h("ul", { class: "timeline" },
      (ctx.hist[s.name].firings || ctx.hist[s.name] || []).map?.((f) => h("li", {}, `${fmtTime(f.tick)} fired at ${fmtTime(f.at)}: ${f.skipped ? "skipped" : f.error || f.result}`)) || json(ctx.hist[s.name])))) : null]);
  return h("div", {},
    h("h1", {}, "Schedules"),
    table(["Name", "Cron", "Action", "State", "Last tick", "Next", "Fired", "Skipped", ""], list.length ? rows : empty(9, "No schedules. Add one with 'mcpd schedule add'.")),
  );
}

async function audit(ctx) {
  ctx.f ||= { q: "", actor: "", type: "", id: "" };
  const f = ctx.f;
  const input = (k, ph) => h("input", { value: f[k], placeholder: ph, oninput: (e) => { f[k] = e.target.value; } });
  const params = new URLSearchParams({ order: "desc", limit: "100" });
  for (const k of ["q", "actor", "type", "id"]) if (f[k]) params.set(k, f[k]);
  const r = await api("GET", "/v1/audit/search?" + params);
  const entries = r.entries || [];
  return h("div", {},
    h("h1", {}, "Audit log"),
    h("div", { class: "row" },
      h("button", { class: "primary", id: "verify", onclick: async () => { await act(async () => { ctx.verify = await api("GET", "/v1/audit/verify"); }); ctx.refresh(); } }, "Verify the chain"),
      ctx.verify ? h("span", { id: "verify-result" }, ctx.verify.ok ? badge("ok") : badge("bad"),
        ctx.verify.ok ? ` ${ctx.verify.entries} entries intact${ctx.verify.pruned_through ? ` after seq ${ctx.verify.pruned_through} (the entries up to it were pruned)` : ""}, ${ctx.verify.checkpoints} signed checkpoints, head ${String(ctx.verify.head?.hash || "").slice(0, 16)}…`
          : ` broken at seq ${ctx.verify.broken_seq}: ${ctx.verify.reason} ${ctx.verify.detail || ""}`) : ""),
    h("div", { class: "row" }, input("q", "text"), input("actor", "actor"), input("type", "kind"), input("id", "subject / message id"),
      h("button", { onclick: () => ctx.refresh() }, "Search")),
    table(["Seq", "Time", "Kind", "Actor", "Subject", "Outcome", "Hash"],
      entries.length ? entries.map((e) => h("tr", {}, num(e.seq), h("td", {}, fmtTime(e.ts)), h("td", {}, e.kind), h("td", {}, e.actor || "-"),
        h("td", { class: "mono" }, e.subject || "-"), h("td", {}, badge(e.outcome)), h("td", { class: "mono" }, String(e.hash || "").slice(0, 12))))
        : empty(7, "No entries match.")),
  );
}
audit.live = false;

async function operators(ctx) {
  const r = await api("GET", "/v1/operators");
  const name = h("input", { placeholder: "name", id: "invite-name" });
  return h("div", {},
    h("h1", {}, "Operators"),
    table(["Operator", "Passkeys", "Invited by", "Created", "Last login", ""],
      r.operators.map((o) => h("tr", {}, h("td", {}, o.name), num((o.passkeys || []).length), h("td", {}, o.invited_by || "-"), h("td", {}, fmtTime(o.created_ms)),
        h("td", {}, fmtTime(o.last_login_ms)),
        h("td", {}, o.name === ctx.state.operator ? "" : h("button", { class: "danger", onclick: async () => { if (confirm(`Remove operator ${o.name}?`)) { await act(() => api("DELETE", "/v1/operators/" + enc(o.name)), `Removed ${o.name}`); ctx.refresh(); } } }, "Remove"))))),
    h("h2", {}, "Pending invites"),
    table(["Name", "Invited by", "Expires"], r.invites.length ? r.invites.map((i) => h("tr", {}, h("td", {}, i.name), h("td", {}, i.invited_by), h("td", {}, fmtTime(i.expires_ms)))) : empty(3, "None.")),
    h("h2", {}, "Invite an operator"),
    h("div", { class: "row" }, name, h("button", { id: "invite", onclick: async () => {
      await act(async () => {
        const inv = await api("POST", "/v1/operators/invites", { name: name.value });
        ctx.invite = inv;
      });
      ctx.refresh();
    } }, "Invite")),
    ctx.invite ? h("div", { class: "card" }, `One-time code for ${ctx.invite.name} (shown once, until ${fmtTime(ctx.invite.expires_ms)}): `, h("b", { class: "code" }, ctx.invite.code)) : "",
  );
}
operators.live = false;

export const pages = { cluster, agents, queues, tasks, schedules, audit, operators };
