// lapstream live scoreboard: one Server-Sent Events stream (/api/v1/stream),
// a snapshot first and then every derived event; the newest revision of each
// fact is current. No build step, no dependencies.
"use strict";

const S = {
  races: new Map(),          // race_id -> race
  standings: new Map(),      // group -> standings event
  classifications: new Map(),// event -> classification event
  venues: new Map(),
  recordLog: [],             // record events as they came
  incidentLog: [],           // incident events as they came
  revisionLog: [],           // revised facts as they came
  chosen: "",                // a race picked by the user ("" = follow the ice)
  changed: new Set(),        // competitor ids whose row just changed
  lastId: null,
};
const MAX_LOG = 40;
const rev = (e) => (typeof e.revision === "number" ? e.revision : 0);

function fmt(ms) {
  if (ms === null || ms === undefined) return "";
  const h = Math.floor(ms / 10);          // truncated to hundredths
  const s = Math.floor(h / 100), cs = String(h % 100).padStart(2, "0");
  if (s < 60) return `${s}.${cs}`;
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}.${cs}`;
}
function gap(ms) { return ms ? "+" + fmt(ms) : ""; }
function clock(tus) {
  if (!tus) return "";
  return new Date(tus / 1000).toISOString().substring(11, 19);
}
function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") n.className = v; else n.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined && k !== "") n.append(k.nodeType ? k : String(k));
  return n;
}

function race(id) {
  let r = S.races.get(id);
  if (!r) {
    r = { race_id: id, setup: null, status: "scheduled", result: null, attempt: 1,
          splits: new Map(), finishes: new Map(), incidents: new Map(), records: new Map(),
          started_t_us: null, updated_t_us: 0 };
    S.races.set(id, r);
  }
  return r;
}
function keepNewest(map, key, ev) {
  const cur = map.get(key);
  if (!cur || rev(ev) >= rev(cur)) { map.set(key, ev); return true; }
  return false;
}
// The incident log has one line per incident and status: a provisional
// suspicion is replaced by its final version (or removed when withdrawn).
function logIncident(ev) {
  const same = (x) => x.race_id === ev.race_id && x.competitor_id === ev.competitor_id &&
    x.skater_id === ev.skater_id && x.type === ev.type && x.status === ev.status;
  const i = S.incidentLog.findIndex(same);
  if (ev.withdrawn) { if (i >= 0) S.incidentLog.splice(i, 1); return; }
  if (i >= 0 && (S.incidentLog[i].revision || 0) <= (ev.revision || 0)) S.incidentLog[i] = ev;
  else if (i < 0) S.incidentLog.push(ev);
}
function clearAttempt(r) { r.splits.clear(); r.finishes.clear(); r.incidents.clear(); r.records.clear(); }

function loadSnapshot(snap) {
  S.races.clear(); S.standings.clear(); S.classifications.clear(); S.venues.clear();
  S.recordLog = []; S.incidentLog = []; S.revisionLog = [];
  for (const v of snap.venues || []) S.venues.set(v.venue, v);
  for (const d of snap.races || []) {
    const r = race(d.race_id);
    Object.assign(r, { setup: d.setup, status: d.status, result: d.result, attempt: d.attempt,
                       started_t_us: d.started_t_us, updated_t_us: d.updated_t_us || 0 });
    for (const c of d.latest_splits || []) {
      if (c.split) r.splits.set(`${c.split.competitor_id}|${c.split.skater_id}|${c.split.distance_m}`, c.split);
      for (const s of Object.values(c.skaters || {}))
        r.splits.set(`${s.competitor_id}|${s.skater_id}|${s.distance_m}`, s);
    }
    for (const s of d.sprint_splits || []) r.splits.set(`${s.competitor_id}|${s.skater_id}|${s.distance_m}`, s);
    for (const f of d.finishes || []) r.finishes.set(f.competitor_id, f);
    for (const i of d.incidents || []) { r.incidents.set(`${i.competitor_id}|${i.skater_id}|${i.type}`, i); logIncident(i); }
    for (const x of d.records || []) { r.records.set(`${x.competitor_id}|${x.record}`, x); S.recordLog.push(x); }
  }
  for (const s of snap.standings || []) S.standings.set(s.group, s);
  for (const c of snap.classifications || []) S.classifications.set(c.event, c);
  trimLogs();
}

function trimLogs() {
  for (const k of ["recordLog", "incidentLog", "revisionLog"])
    if (S[k].length > MAX_LOG) S[k] = S[k].slice(-MAX_LOG);
}

function apply(ev) {
  const k = ev.kind;
  if (k === "venue") { S.venues.set(ev.venue, ev); return; }
  if (k === "race") { const r = race(ev.race_id); r.setup = ev; return; }
  if (k === "standings") { keepNewest(S.standings, ev.group, ev); return; }
  if (k === "classification") { keepNewest(S.classifications, ev.event, ev); return; }
  if (!ev.race_id) return;
  const r = race(ev.race_id);
  const attempt = typeof ev.attempt === "number" ? ev.attempt : r.attempt;
  if (attempt > r.attempt) { r.attempt = attempt; clearAttempt(r); }
  if (attempt < r.attempt) return;
  r.updated_t_us = Math.max(r.updated_t_us || 0, ev.t_us || 0);
  if (r.status === "scheduled") r.status = "running";
  if (k === "split") {
    if (keepNewest(r.splits, `${ev.competitor_id}|${ev.skater_id}|${ev.distance_m}`, ev)) {
      S.changed.add(ev.competitor_id);
      if (rev(ev) > 0) noteRevision(ev, `split ${ev.distance_m} m revised to ${ev.time}`);
    }
  } else if (k === "finish") {
    if (keepNewest(r.finishes, ev.competitor_id, ev)) {
      S.changed.add(ev.competitor_id);
      if (rev(ev) > 0) noteRevision(ev, `finish revised to ${ev.time} (${ev.source}), revision ${rev(ev)}`);
    }
  } else if (k === "incident") {
    const ikey = `${ev.competitor_id}|${ev.skater_id}|${ev.type}`;
    if (ev.withdrawn) { if (r.incidents.get(ikey)?.status === ev.status) r.incidents.delete(ikey); }
    else r.incidents.set(ikey, ev);
    logIncident(ev); S.changed.add(ev.competitor_id);
  } else if (k === "record") {
    keepNewest(r.records, `${ev.competitor_id}|${ev.record}`, ev);
    S.recordLog.push(ev); S.changed.add(ev.competitor_id);
  } else if (k === "result") {
    const cur = r.result;
    if (!cur || rev(ev) >= rev(cur)) {
      if (cur) diffResult(cur, ev);
      r.result = ev; r.status = ev.status;
      if (rev(ev) > 0) noteRevision(ev, `result revision ${rev(ev)}: ${ev.status}`);
    }
  }
  trimLogs();
}

function diffResult(old, ev) {
  const before = new Map(old.ranking.map((e) => [e.competitor_id, e]));
  for (const e of ev.ranking) {
    const b = before.get(e.competitor_id);
    if (!b || b.time_ms !== e.time_ms || b.rank !== e.rank || b.irm !== e.irm) S.changed.add(e.competitor_id);
  }
}
function noteRevision(ev, text) { S.revisionLog.push({ ev, text }); }

// -- which race to show -----------------------------------------------------
function current() {
  if (S.chosen && S.races.has(S.chosen)) return S.races.get(S.chosen);
  let best = null;
  for (const r of S.races.values()) {
    if (!r.setup && !r.result && !r.splits.size) continue;
    const on = r.status === "running" || r.status === "live";
    const t = r.updated_t_us || r.started_t_us || 0;
    if (!best || (on && !best.on) || (on === best.on && t > best.t)) best = { r, on, t };
  }
  return best ? best.r : null;
}

function competitorsOf(r) {
  const out = new Map();
  for (const c of (r.setup && r.setup.competitors) || []) out.set(c.competitor_id, c);
  for (const s of r.splits.values()) if (!out.has(s.competitor_id)) out.set(s.competitor_id, { competitor_id: s.competitor_id });
  if (r.result) for (const e of r.result.ranking) if (!out.has(e.competitor_id))
    out.set(e.competitor_id, { competitor_id: e.competitor_id, name: e.name, nation: e.nation });
  return [...out.values()];
}
function skaterName(r, id) {
  for (const c of (r.setup && r.setup.competitors) || [])
    for (const s of c.skaters || []) if (s.skater_id === id) return s.name || id;
  return id;
}

// Mass start: the intermediate sprint points so far, from who crossed the line
// first at each sprint lap (the finish and the result carry the final count).
function sprintPoints(r, id) {
  const s = r.setup || {};
  const lap = (S.venues.get(s.venue) || {}).lap_m || 400;
  const sprints = s.sprints || { 4: [5, 3, 1], 8: [5, 3, 1], 12: [5, 3, 1] };
  let pts = 0;
  for (const [l, award] of Object.entries(sprints)) {
    const d = Number(l) * lap;
    const at = [...r.splits.values()].filter((x) => x.distance_m === d).sort((a, b) => a.time_ms - b.time_ms);
    const k = at.findIndex((x) => x.competitor_id === id);
    if (k >= 0 && k < award.length) pts += award[k];
  }
  return pts;
}

function rows(r) {
  const fmtName = r.setup ? r.setup.format : (r.result && r.result.format);
  const team = fmtName === "team_pursuit";
  const entries = new Map(((r.result && r.result.ranking) || []).map((e) => [e.competitor_id, e]));
  const list = [];
  for (const c of competitorsOf(r)) {
    const id = c.competitor_id;
    let split = null; const skaters = new Map();
    for (const s of r.splits.values()) {
      if (s.competitor_id !== id) continue;
      if (!team || s.skater_id === null) { if (!split || s.distance_m > split.distance_m) split = s; }
      if (s.skater_id !== null) {
        const cur = skaters.get(s.skater_id);
        if (!cur || s.distance_m > cur.distance_m) skaters.set(s.skater_id, s);
      }
    }
    let third = null;
    if (team && skaters.size) {
      for (const s of skaters.values())
        if (!third || s.distance_m < third.distance_m || (s.distance_m === third.distance_m && s.time_ms > third.time_ms)) third = s;
    }
    const fin = r.finishes.get(id) || null;
    const entry = entries.get(id) || null;
    const incidents = [...r.incidents.values()].filter((i) => i.competitor_id === id);
    const records = [...r.records.values()].filter((x) => x.competitor_id === id);
    const finished = !!(fin || (entry && entry.time_ms !== null));
    const time_ms = entry && entry.time_ms !== null ? entry.time_ms : fin ? fin.time_ms : split ? split.time_ms : null;
    const rank = entry ? entry.rank : fin ? fin.rank : split ? split.rank : null;
    const behind = entry ? entry.behind_ms : split ? split.behind_ms : null;
    const dist = finished ? (r.setup ? r.setup.distance_m : split && split.distance_m) : split ? split.distance_m : null;
    list.push({ c, id, split, third, fin, entry, incidents, records, finished, time_ms, rank, behind, dist });
  }
  list.sort((a, b) => {
    const ra = a.entry && a.entry.rank, rb = b.entry && b.entry.rank;
    if (ra && rb) return ra - rb;
    if (a.finished !== b.finished) return a.finished ? -1 : 1;
    if ((b.dist || 0) !== (a.dist || 0)) return (b.dist || 0) - (a.dist || 0);
    if (a.time_ms === null) return 1; if (b.time_ms === null) return -1;
    return a.time_ms - b.time_ms;
  });
  return { list, team, mass: fmtName === "mass_start" };
}

const STATUS_TEXT = { live: "live", running: "live", unofficial: "unofficial", official: "official",
                      void: "void", scheduled: "scheduled" };

function render() {
  renderPicker();
  const r = current();
  const body = document.getElementById("board-body");
  if (!r) { body.replaceChildren(); return; }
  const st = document.getElementById("race-status");
  const status = r.result ? r.result.status : r.status;
  st.textContent = STATUS_TEXT[status] || status;
  st.className = "status " + status;
  document.getElementById("race-rev").textContent = r.result ? `result revision ${rev(r.result)}` : "";
  const s = r.setup || {};
  document.getElementById("race-title").textContent = r.race_id;
  const venue = S.venues.get(s.venue);
  document.getElementById("race-meta").textContent = [
    s.format && s.format.replace("_", " "), s.gender === "W" ? "women" : s.gender === "M" ? "men" : s.gender,
    s.distance_m && `${s.distance_m} m`, venue ? venue.name : s.venue, r.attempt > 1 ? `attempt ${r.attempt}` : "",
  ].filter(Boolean).join(" \u00b7 ");

  const { list, team, mass } = rows(r);
  document.querySelectorAll(".board .pts").forEach((n) => { n.hidden = !mass; });
  const trs = list.map((x) => {
    const who = el("td", { class: "who" }, el("span", { class: "name" }, x.c.name || x.id),
                   x.c.nation && x.c.nation !== x.c.name ? ` ${x.c.nation}` : "");
    const codes = new Set((x.entry && x.entry.records) || []);
    for (const rec of x.records) {
      const code = (rec.equalled ? "=" : "") + rec.record;
      if (rec.withdrawn) { codes.delete(code); who.append(el("span", { class: "flag withdrawn", title: "withdrawn" }, code)); }
      else codes.add(code);
    }
    for (const code of codes) who.append(el("span", { class: "flag", title: "record" }, code));
    if (team && x.third && !x.finished)
      who.append(el("span", { class: "third" }, `third: ${skaterName(r, x.third.skater_id)} ${x.third.distance_m} m`));
    else if (team && x.third)
      who.append(el("span", { class: "third" }, `third: ${skaterName(r, x.third.skater_id)}`));
    const notes = el("td", { class: "notes" });
    for (const i of x.incidents) {
      if (i.status === "cleared") continue;   // the list on the side keeps it
      const whoFell = i.skater_id ? skaterName(r, i.skater_id) : "";
      notes.append(el("span", { class: `note ${i.type} ${i.status}` }, `${i.type} ${i.status}${whoFell ? " (" + whoFell + ")" : ""}`));
    }
    if (x.entry && x.entry.irm) notes.append(el("span", { class: "note irm" }, x.entry.irm));
    if (x.fin && (rev(x.fin) > 0 || x.fin.source === "photo"))
      notes.append(el("span", { class: "note revised" }, `${x.fin.source === "photo" ? "photo" : "revised"} rev ${rev(x.fin)}`));
    const last = x.fin || x.split;
    if (last && last.final === false) notes.append(el("span", { class: "note prov" }, "provisional"));
    const lap = x.split && x.split.lap_ms !== null && x.split.lap_ms !== undefined ? fmt(x.split.lap_ms) : "";
    const points = x.entry && x.entry.points !== undefined ? x.entry.points
      : x.fin && x.fin.points !== undefined ? x.fin.points : mass ? sprintPoints(r, x.id) : "";
    const pts = el("td", { class: "pts" }, points);
    pts.hidden = !mass;
    const tr = el("tr", { "data-competitor": x.id },
      el("td", { class: "rank" }, x.rank || (x.entry && x.entry.irm) || ""), who,
      el("td", { class: "num dist" }, x.dist ? `${x.dist} m` : ""),
      el("td", { class: "num time" }, fmt(x.time_ms)),
      el("td", { class: "num" }, gap(x.behind)),
      el("td", { class: "num lap" }, lap), pts, notes);
    if (S.changed.has(x.id)) tr.className = "changed";
    return tr;
  });
  body.replaceChildren(...trs);
  S.changed.clear();
  renderLists(r);
  renderStandings(r);
}

function renderPicker() {
  const sel = document.getElementById("race-select");
  const ids = [...S.races.values()].filter((r) => r.setup || r.result || r.splits.size)
    .sort((a, b) => (a.started_t_us || a.updated_t_us || 0) - (b.started_t_us || b.updated_t_us || 0)).map((r) => r.race_id);
  if (sel.options.length - 1 === ids.length && ids.every((id, i) => sel.options[i + 1].value === id)) return;
  sel.replaceChildren(el("option", { value: "" }, "the race on the ice now"),
                      ...ids.map((id) => el("option", { value: id }, id)));
  sel.value = S.chosen;
}

function renderLists(r) {
  const nameOf = (id) => { for (const c of competitorsOf(r)) if (c.competitor_id === id) return c.name || id; return id; };
  const recs = S.recordLog.filter((x) => x.race_id === r.race_id);
  document.getElementById("records").replaceChildren(...(recs.length ? recs.map((x) =>
    el("li", {}, el("span", { class: "when" }, clock(x.t_us)),
       el("span", { class: x.withdrawn ? "flag withdrawn" : "flag" }, (x.equalled ? "=" : "") + x.record), " ",
       `${x.withdrawn ? "withdrawn: " : x.equalled ? "equalled: " : "new: "}${x.time} ${nameOf(x.competitor_id)}`,
       x.previous_time ? ` (was ${x.previous_time}${x.previous_holder ? " " + x.previous_holder : ""})` : "")
  ) : [el("li", { class: "empty" }, "none yet")]));
  const incs = S.incidentLog.filter((x) => x.race_id === r.race_id);
  document.getElementById("incidents").replaceChildren(...(incs.length ? incs.map((i) =>
    el("li", {}, el("span", { class: "when" }, clock(i.t_us)),
       `${i.skater_id ? skaterName(r, i.skater_id) : nameOf(i.competitor_id)} (${i.competitor_id}): ${i.type} ${i.status} at ${i.at_m} m`,
       i.note ? ` - ${i.note}` : "")
  ) : [el("li", { class: "empty" }, "none")]));
  const revs = S.revisionLog.filter((x) => x.ev.race_id === r.race_id);
  document.getElementById("revisions").replaceChildren(...(revs.length ? revs.map((x) =>
    el("li", {}, el("span", { class: "when" }, clock(x.ev.t_us)),
       x.ev.competitor_id ? `${nameOf(x.ev.competitor_id)}: ${x.text}` : x.text)
  ) : [el("li", { class: "empty" }, "none")]));
}

function renderStandings(r) {
  const group = (r.setup && r.setup.group) || (r.result && r.result.group) || r.race_id;
  const st = S.standings.get(group);
  document.getElementById("standings-title").textContent = `Standings ${group}${st && st.complete ? " (complete)" : ""}`;
  document.getElementById("standings-body").replaceChildren(...((st && st.ranking) || []).map((e) =>
    el("tr", {}, el("td", { class: "rank" }, e.rank || e.irm || ""),
       el("td", {}, e.name || e.competitor_id, ...(e.records || []).map((c) => el("span", { class: "flag" }, c))),
       el("td", { class: "num" }, e.time || ""), el("td", { class: "num" }, gap(e.behind_ms)),
       el("td", { class: "race-col" }, e.race_id || ""))));
  const s = r.setup || {};
  const key = s.competition ? `${s.competition}-${s.format}-${s.gender}-${s.distance_m}` : null;
  const cl = key && S.classifications.get(key);
  document.getElementById("classification-title").textContent =
    `Classification${cl ? " " + cl.event : ""}${cl && cl.complete ? " (complete)" : ""}`;
  document.getElementById("classification").replaceChildren(...((cl && cl.ranking) || []).map((p) =>
    el("li", {}, `${p.competitor_id} (${p.race_id})`)));
}

// -- the stream ------------------------------------------------------------------
let es = null, pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}
function setConn(text, ok) {
  const c = document.getElementById("conn");
  c.textContent = text; c.className = "conn " + (ok ? "ok" : "bad");
}
const KINDS = ["venue", "race", "split", "finish", "incident", "record", "result", "standings", "classification"];
function connect() {
  const url = "/api/v1/stream" + (S.lastId ? "?last_event_id=" + encodeURIComponent(S.lastId) : "");
  es = new EventSource(url);
  es.onopen = () => setConn("live", true);
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting", false);
  es.addEventListener("snapshot", (m) => { S.lastId = m.lastEventId; loadSnapshot(JSON.parse(m.data)); schedule(); });
  for (const k of KINDS) es.addEventListener(k, (m) => { S.lastId = m.lastEventId; apply(JSON.parse(m.data)); schedule(); });
  es.addEventListener("close", () => {   // the gateway closed us (too slow): resume where we were
    es.close(); setConn("resuming", false); setTimeout(connect, 500);
  });
}
document.getElementById("race-select").addEventListener("change", (e) => { S.chosen = e.target.value; render(); });
window.lapstream = S;
connect();
