// regiongate console: sign in with an API key, then poll the public API (/v1/regions, /v1/usage).
// No framework and no external request; everything is built with DOM calls (no innerHTML with data).
"use strict";

(function () {
  const KEY = "regiongate.console.key";
  const REGIONS_EVERY_MS = 2000;
  const USAGE_EVERY_MS = 10000;
  const TIERS = ["priority", "default", "flex"];
  const PALETTE = ["#4f46e5", "#10b981", "#f59e0b", "#0ea5e9", "#ec4899", "#8b5cf6", "#14b8a6", "#f97316"];
  const $ = (id) => document.getElementById(id);
  const state = { key: null, session: null, regions: null, usage: [], metric: "requests", timers: [], models: [] };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + state.key }, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const err = new Error((body && body.error && body.error.message) || "HTTP " + resp.status);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  const fmt = new Intl.NumberFormat("en-US");
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

  // --- sign in / out -------------------------------------------------------------------------------
  async function signIn(key, quiet) {
    state.key = key;
    const button = $("signin-button");
    button.disabled = true;
    try {
      state.session = await api("/console/api/session");
    } catch (e) {
      state.key = null;
      sessionStorage.removeItem(KEY);
      if (!quiet) showError(e.status === 401 ? "That API key is not valid. Check it and try again." : e.message);
      return;
    } finally {
      button.disabled = false;
    }
    sessionStorage.setItem(KEY, key);
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("nav").hidden = false;
    $("who").hidden = false;
    $("who-team").textContent = state.session.team;
    $("who-key").textContent = state.session.key_id;
    $("team-title").textContent = "Team " + state.session.team;
    $("team-sub").textContent = describeFences(state.session);
    $("footer-endpoint").textContent = "Global endpoint: " + state.session.base_domain;
    renderTiers();
    poll(refreshRegions, REGIONS_EVERY_MS);
    poll(refreshUsage, USAGE_EVERY_MS);
  }

  function describeFences(s) {
    const parts = [];
    parts.push(s.zone ? "This key is kept inside data zone " + s.zone.toUpperCase() + "." : "This key may be served in every region.");
    if (s.spill_budget_ms !== null && s.spill_budget_ms !== undefined) {
      parts.push("Global spillover within " + s.spill_budget_ms + " ms of the best region.");
    }
    parts.push(s.grants === null ? "Your team may use every model." : "Your team uses an allow-list of models.");
    return parts.join(" ");
  }

  function signOut(message) {
    for (const t of state.timers) clearTimeout(t);
    state.timers = [];
    state.key = null;
    state.session = null;
    sessionStorage.removeItem(KEY);
    $("dashboard").hidden = true;
    $("nav").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    $("api-key").value = "";
    if (message) showError(message);
  }

  function showError(message) {
    const box = $("signin-error");
    box.textContent = message;
    box.hidden = false;
  }

  function poll(fn, every) {
    const tick = async () => {
      if (!state.key) return;
      try {
        await fn();
      } catch (e) {
        if (e.status === 401) {
          signOut("Your API key is no longer accepted (it may have been revoked). Sign in with another key.");
          return;
        }
        setLive(false);
      }
      if (state.key) state.timers.push(setTimeout(tick, every));
    };
    tick();
  }

  function setLive(ok) {
    const live = $("live");
    live.classList.toggle("stale", !ok);
    const now = new Date().toLocaleTimeString([], { hour12: false });
    $("live-text").textContent = ok ? "Live · updated " + now : "Reconnecting…";
  }

  // --- regions: the matrix and the status cards ---------------------------------------------------
  async function refreshRegions() {
    const body = await api("/v1/regions");
    state.regions = body.data;
    renderMatrix(state.regions);
    renderRegions(state.regions);
    setLive(true);
  }

  function modelOrder(regions) {
    const seen = new Map();
    for (const r of regions) for (const m of r.models) seen.set(m.id, true);
    return Array.from(seen.keys()).sort();
  }

  function renderMatrix(regions) {
    const models = modelOrder(regions);
    state.models = models;
    const table = $("matrix");
    const zones = [];
    for (const r of regions) {
      const last = zones[zones.length - 1];
      if (last && last.zone === r.zone) last.count += 1;
      else zones.push({ zone: r.zone, count: 1 });
    }
    const zoneRow = el("tr", { class: "zones" }, el("th", { text: "" }));
    for (const z of zones) zoneRow.append(el("th", { class: "zone", colspan: String(z.count), text: z.zone }));
    zoneRow.append(el("th", { text: "" }));
    const headRow = el("tr", {}, el("th", { text: "Model" }));
    for (const r of regions) {
      headRow.append(el("th", { "data-region": r.id },
        el("span", { class: "region-id", text: r.id }), el("span", { class: "region-name", text: r.name || "" })));
    }
    headRow.append(el("th", { class: "global" }, el("span", { class: "region-id", text: "Global" }),
      el("span", { class: "region-name", text: state.session.base_domain })));
    const tbody = el("tbody");
    for (const m of models) {
      const row = el("tr", { "data-model": m }, el("td", { class: "model", text: m }));
      for (const r of regions) {
        const dep = r.models.find((x) => x.id === m);
        const cell = el("td", { "data-region": r.id, "data-offered": dep ? "yes" : "no" });
        if (dep) {
          cell.append(el("span", { class: "dot " + (dep.healthy ? "ok" : "warn") }));
          cell.title = m + " in " + r.id + ": " + (dep.healthy ? "healthy" : "no healthy backend") + ", " +
            dep.capacity.in_use + "/" + dep.capacity.limit + " in use";
        } else {
          cell.append(el("span", { class: "dash", text: "—" }));
          cell.title = m + " is not offered to your team in " + r.id;
        }
        row.append(cell);
      }
      row.append(el("td", { class: "global", "data-region": "global", "data-offered": "yes" },
        el("span", { class: "check", text: "✓" })));
      tbody.append(row);
    }
    table.replaceChildren(el("thead", {}, zoneRow, headRow), tbody);
    const healthy = regions.filter((r) => r.healthy).length;
    $("stat-regions").textContent = healthy + " / " + regions.length;
    $("stat-models").textContent = String(models.length);
  }

  function renderRegions(regions) {
    const box = $("regions");
    const cards = regions.map((r) => {
      let inUse = 0, limit = 0, ttftSum = 0, ttftN = 0, unhealthy = 0;
      for (const m of r.models) {
        inUse += m.capacity.in_use;
        limit += m.capacity.limit;
        if (m.ttft_ms !== null && m.ttft_ms !== undefined) { ttftSum += m.ttft_ms; ttftN += 1; }
        if (!m.healthy) unhealthy += 1;
      }
      const status = !r.healthy ? ["bad", "Unavailable"] : unhealthy ? ["warn", "Degraded"] : ["ok", "Healthy"];
      const share = limit ? inUse / limit : 0;
      const fill = el("span");
      fill.style.width = Math.round(share * 100) + "%";
      const bar = el("div", { class: "bar" + (share >= 1 ? " full" : share >= 0.75 ? " hot" : "") }, fill);
      const ttft = ttftN ? Math.round(ttftSum / ttftN) + " ms" : "—";
      return el("div", { class: "region", "data-region": r.id, "data-healthy": r.healthy ? "yes" : "no" },
        el("div", { class: "region-top" },
          el("div", {},
            el("div", { class: "region-title" }, r.name || r.id, el("span", { class: "zone-chip", text: r.zone })),
            el("div", { class: "region-sub", text: r.id + " · " + r.models.length + " model" + (r.models.length === 1 ? "" : "s") })),
          el("span", { class: "pill " + status[0], text: status[1] })),
        el("div", { class: "metrics" },
          el("div", {},
            el("div", { class: "metric-label", text: "Capacity in use" }),
            el("div", { class: "metric-value capacity", text: inUse + " / " + limit }),
            bar),
          el("div", {},
            el("div", { class: "metric-label", text: "Recent TTFT" }),
            el("div", { class: "metric-value ttft", text: ttft }))),
        el("div", { class: "endpoint", text: "https://" + r.id + "." + state.session.base_domain + "/v1" }));
    });
    box.replaceChildren(...cards);
  }

  // --- usage ---------------------------------------------------------------------------------------
  async function refreshUsage() {
    const body = await api("/v1/usage");
    state.usage = body.data || [];
    renderUsage();
  }

  function lastDays(n) {
    const out = [];
    const now = Date.now();
    for (let i = n - 1; i >= 0; i--) out.push(new Date(now - i * 86400000).toISOString().slice(0, 10));
    return out;
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function renderUsage() {
    const rows = state.usage;
    const metric = state.metric;
    const value = (r) => metric === "requests" ? r.requests : r.prompt_tokens + r.completion_tokens;
    let requests = 0, tokens = 0;
    for (const r of rows) { requests += r.requests; tokens += r.prompt_tokens + r.completion_tokens; }
    $("stat-requests").textContent = fmt.format(requests);
    $("stat-tokens").textContent = compact.format(tokens);

    const days = lastDays(14);
    const models = Array.from(new Set(rows.map((r) => r.model))).sort();
    const colour = (m) => PALETTE[models.indexOf(m) % PALETTE.length];
    const totals = days.map((d) => {
      const byModel = new Map();
      for (const r of rows) if (r.day === d) byModel.set(r.model, (byModel.get(r.model) || 0) + value(r));
      return byModel;
    });
    const max = niceMax(Math.max(0, ...totals.map((t) => Array.from(t.values()).reduce((a, b) => a + b, 0))));
    const W = 960, H = 240, L = 44, B = 26, T = 10, R = 8;
    const plotW = W - L - R, plotH = H - B - T, step = plotW / days.length, barW = Math.min(38, step * 0.62);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
      "aria-label": "Usage per day" });
    for (let i = 0; i <= 4; i++) {
      const y = T + plotH - (plotH * i) / 4;
      chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      chart.append(svg("text", { class: "axis", x: L - 8, y: y + 4, "text-anchor": "end", text: compact.format((max * i) / 4) }));
    }
    days.forEach((d, i) => {
      const x = L + i * step + (step - barW) / 2;
      let y = T + plotH;
      for (const m of models) {
        const v = totals[i].get(m) || 0;
        if (!v) continue;
        const h = (plotH * v) / max;
        y -= h;
        const rect = svg("rect", { x: x, y: y, width: barW, height: Math.max(h, 1), rx: 3, fill: colour(m), "data-day": d, "data-model": m });
        rect.append(svg("title", { text: d + " · " + m + ": " + fmt.format(v) + " " + metric }));
        chart.append(rect);
      }
      if (i % 2 === days.length % 2 || days.length <= 8) {
        chart.append(svg("text", { class: "axis", x: L + i * step + step / 2, y: H - 8, "text-anchor": "middle", text: d.slice(5) }));
      }
    });
    if (!rows.length) {
      chart.append(svg("text", { class: "empty", x: L + plotW / 2, y: T + plotH / 2, "text-anchor": "middle",
        text: "No usage yet: send a request with this key and it appears here." }));
    }
    $("usage-chart").replaceChildren(chart);
    $("usage-legend").replaceChildren(...models.map((m) => {
      const sw = el("span", { class: "swatch" });
      sw.style.background = colour(m);
      return el("span", {}, sw, m);
    }));

    const agg = new Map();
    for (const r of rows) {
      const k = r.model + "\u0000" + r.region;
      const a = agg.get(k) || { model: r.model, region: r.region, requests: 0, errors: 0, prompt: 0, completion: 0, ttftW: 0, ttftN: 0 };
      a.requests += r.requests; a.errors += r.errors; a.prompt += r.prompt_tokens; a.completion += r.completion_tokens;
      if (r.avg_ttft_ms !== null && r.avg_ttft_ms !== undefined) { a.ttftW += r.avg_ttft_ms * r.requests; a.ttftN += r.requests; }
      agg.set(k, a);
    }
    const head = el("tr", {}, ...["Model", "Region", "Requests", "Errors", "Prompt tokens", "Completion tokens", "Avg TTFT"].map((t) => el("th", { text: t })));
    const body = el("tbody");
    for (const a of Array.from(agg.values()).sort((x, y) => y.requests - x.requests)) {
      body.append(el("tr", { "data-model": a.model, "data-region": a.region || "none" },
        el("td", { class: "mono", text: a.model }), el("td", { class: "mono", text: a.region || "not served" }),
        el("td", { text: fmt.format(a.requests) }), el("td", { text: fmt.format(a.errors) }),
        el("td", { text: fmt.format(a.prompt) }), el("td", { text: fmt.format(a.completion) }),
        el("td", { text: a.ttftN ? Math.round(a.ttftW / a.ttftN) + " ms" : "—" })));
    }
    $("usage-table").replaceChildren(el("thead", {}, head), body);
    renderTierUsage(rows);
  }

  // --- service tiers: what the team may use, and its usage by tier --------------------------------
  function renderTiers() {
    const s = state.session;
    const allowed = s.service_tiers === null || s.service_tiers === undefined ? TIERS : s.service_tiers;
    $("tiers").replaceChildren(...TIERS.map((t) => {
      const ok = allowed.includes(t);
      const chip = el("span", { class: "tier", "data-tier": t, "data-allowed": ok ? "yes" : "no",
        title: ok ? "Your team may ask for " + t : "Not allowed for your team: asking for it is refused (403)" }, t);
      if (t === s.service_tier) chip.append(el("span", { class: "tier-note", text: "this key's default" }));
      return chip;
    }));
  }

  function renderTierUsage(rows) {
    const by = new Map();
    let total = 0;
    for (const r of rows) {
      for (const [tier, t] of Object.entries(r.by_tier || {})) {
        const a = by.get(tier) || { requests: 0, errors: 0, tokens: 0 };
        a.requests += t.requests; a.errors += t.errors; a.tokens += t.prompt_tokens + t.completion_tokens;
        by.set(tier, a);
        total += t.requests;
      }
    }
    const order = (t) => (TIERS.indexOf(t) < 0 ? TIERS.length : TIERS.indexOf(t));
    const head = el("tr", {}, ...["Tier", "Share", "Requests", "Errors", "Tokens"].map((t) => el("th", { text: t })));
    const body = el("tbody");
    for (const tier of Array.from(by.keys()).sort((x, y) => order(x) - order(y))) {
      const a = by.get(tier);
      body.append(el("tr", { "data-tier": tier },
        el("td", { class: "mono", text: tier }), el("td", { text: total ? Math.round((100 * a.requests) / total) + "%" : "—" }),
        el("td", { class: "requests", text: fmt.format(a.requests) }), el("td", { text: fmt.format(a.errors) }),
        el("td", { text: fmt.format(a.tokens) })));
    }
    $("tier-table").replaceChildren(el("thead", {}, head), body);
  }

  // --- wiring --------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      $("signin-error").hidden = true;
      const key = $("api-key").value.trim();
      if (key) signIn(key, false);
    });
    $("signout").addEventListener("click", () => signOut(null));
    for (const b of document.querySelectorAll("#usage-metric button")) {
      b.addEventListener("click", () => {
        state.metric = b.dataset.metric;
        for (const o of document.querySelectorAll("#usage-metric button")) o.classList.toggle("active", o === b);
        renderUsage();
      });
    }
    const saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved, true);
  });
})();
