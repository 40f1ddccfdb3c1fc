"use strict";
// The token arrives once as ?token=; it is moved to sessionStorage and removed from the address bar,
// then sent as a Bearer header (EventSource cannot send headers, so the feeds take it as ?token=).
(function () {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("fx-token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  const token = sessionStorage.getItem("fx-token") || "";
  const $ = (id) => document.getElementById(id);
  const state = { live: null, entries: 0, queue: null, queueTimer: null, actions: [] };
  window.__fx = state;

  function yuan(cents) {
    const neg = cents < 0, abs = Math.abs(cents);
    const whole = Math.floor(abs / 100).toLocaleString("en-US");
    return (neg ? "-¥" : "¥") + whole + "." + String(abs % 100).padStart(2, "0");
  }

  async function api(path, init) {
    const opts = init || {};
    const r = await fetch(path, { ...opts, headers: { Authorization: "Bearer " + token, ...(opts.headers || {}) } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error(body.error || ("HTTP " + r.status));
      e.status = r.status;
      throw e;
    }
    return body;
  }

  // One Idempotency-Key per (action, withdrawal): a double click or a retry after a lost answer creates nothing new.
  async function idempotencyKey(action, id) {
    const plain = "dash:" + action + ":" + id;
    if (plain.length <= 128 && /^[A-Za-z0-9._:-]+$/.test(plain)) return plain;
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(id));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    return "dash:" + action + ":" + hex.slice(0, 40);
  }

  function setStatus(text, live) {
    $("status").textContent = text;
    $("status").className = "pill" + (live ? " live" : "");
  }

  function what(entry) {
    if (entry.withdrawal_id) return "withdrawal " + entry.withdrawal_id;
    if (entry.adjustment_id) return "adjustment " + entry.adjustment_id + (entry.reason ? " (" + entry.reason + ")" : "");
    return "L" + entry.level + " " + entry.order_id;
  }

  function tick(listId, entry, showWho) {
    const li = document.createElement("li");
    const cls = entry.amount_cents < 0 ? "neg" : "pos";
    const cells = [
      [entry.ts.replace("T", " ").slice(0, 19), ""],
      [(showWho ? entry.beneficiary_id + " · " : "") + what(entry), ""],
      [entry.kind, "kind"],
      [yuan(entry.amount_cents), cls],
    ];
    for (const [text, c] of cells) {
      const span = document.createElement("span");
      span.textContent = text;
      if (c) span.className = c;
      li.appendChild(span);
    }
    const list = $(listId);
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 40) list.removeChild(list.lastChild);
    state.entries += 1;
  }

  function follow(path, listId, showWho) {
    const sep = path.includes("?") ? "&" : "?";
    const es = new EventSource(path + sep + "backlog=30&token=" + encodeURIComponent(token));
    es.addEventListener("open", () => setStatus("live", true));
    es.addEventListener("entry", (ev) => tick(listId, JSON.parse(ev.data), showWho));
    es.addEventListener("expired", () => { es.close(); setStatus("token expired", false); });
    es.addEventListener("error", () => setStatus("reconnecting…", false));
    window.addEventListener("pagehide", () => es.close());
  }

  function drawChart(series) {
    const c = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    c.width = w * dpr; c.height = h * dpr;
    const g = c.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const pad = { l: 44, r: 70, t: 10, b: 22 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    const maxO = Math.max(1, ...series.map((s) => s.orders));
    const maxG = Math.max(1, ...series.map((s) => s.gmv_cents));
    g.strokeStyle = "#263040"; g.fillStyle = "#8b98a5"; g.font = "11px system-ui";
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
      g.fillText(String(Math.round((maxO * i) / 4)), 4, y + 4);
      g.fillText(yuan(Math.round((maxG * i) / 4)), pad.l + pw + 4, y + 4);
    }
    const bw = pw / series.length;
    g.fillStyle = "#ff6a3d";
    let points = 0;
    series.forEach((s, i) => {
      if (s.orders > 0) points += 1;
      const bh = (ph * s.orders) / maxO;
      g.fillRect(pad.l + i * bw, pad.t + ph - bh, Math.max(1, bw - 0.5), bh);
    });
    g.strokeStyle = "#58a6ff"; g.lineWidth = 1.5; g.beginPath();
    series.forEach((s, i) => {
      const x = pad.l + i * bw + bw / 2, y = pad.t + ph - (ph * s.gmv_cents) / maxG;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    g.fillStyle = "#8b98a5";
    g.fillText("-" + series.length + " s", pad.l, h - 6);
    g.fillText("now", pad.l + pw - 20, h - 6);
    c.dataset.points = String(points);
  }

  async function refreshLive() {
    try {
      const live = await api("/api/live?window=300");
      state.live = live;
      $("k-ops").textContent = live.orders_per_s.toFixed(1);
      $("k-orders").textContent = live.orders.toLocaleString("en-US");
      $("k-gmv").textContent = yuan(live.gmv_cents);
      $("k-comm").textContent = yuan(live.commission_cents);
      drawChart(live.series);
    } catch (e) { setStatus(String(e.message), false); }
  }

  async function refreshBoard() {
    const metric = $("lb-metric").value, period = $("lb-period").value;
    try {
      const b = await api("/api/leaderboard?limit=10&metric=" + metric + "&period=" + period);
      const body = $("board").tBodies[0];
      body.replaceChildren();
      for (const row of b.entries) {
        const tr = body.insertRow();
        tr.insertCell().textContent = String(row.rank);
        tr.insertCell().textContent = row.distributor_id;
        const v = tr.insertCell();
        v.className = "num";
        v.textContent = metric === "recruits" ? String(row.value) : yuan(row.value);
      }
    } catch (e) { setStatus(String(e.message), false); }
  }

  async function refreshMe(id) {
    try {
      const d = await api("/api/distributors/" + encodeURIComponent(id));
      $("d-pending").textContent = yuan(d.pending_cents);
      $("d-available").textContent = yuan(d.available_cents);
      $("d-reserved").textContent = yuan(d.reserved_cents || 0);
      $("d-withdrawn").textContent = yuan(d.withdrawn_cents || 0);
      $("d-lifetime").textContent = yuan(d.lifetime_earned_cents);
      $("d-tier").textContent = d.tier;
      $("d-team").textContent = d.team.level1 + " / " + d.team.level2 + " / " + d.team.level3;
    } catch (e) { setStatus(String(e.message), false); }
  }

  // The next steps an operator can take from each open state (contract v2 withdrawals).
  const ACTIONS = { requested: [["approve", "ok"], ["reject", "no"]], approved: [["paid", "ok"], ["failed", "no"], ["reject", "no"]] };

  function short(id) {
    return id.length > 40 ? id.slice(0, 37) + "…" : id;
  }

  function utc(ms) {
    return typeof ms === "number" ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "";
  }

  async function act(w, action, button) {
    const row = button.closest("tr");
    for (const b of row.querySelectorAll("button")) b.disabled = true;
    try {
      const key = await idempotencyKey(action, w.withdrawal_id);
      await api("/api/operator/withdrawals/" + encodeURIComponent(w.withdrawal_id) + "/" + action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": key },
        body: JSON.stringify({ reason: "dashboard" }),
      });
      $("q-status").textContent = action + " " + short(w.withdrawal_id) + " sent";
      state.actions.push({ id: w.withdrawal_id, action: action, key: key });
    } catch (e) {
      $("q-status").textContent = action + " " + short(w.withdrawal_id) + ": " + e.message;
      for (const b of row.querySelectorAll("button")) b.disabled = false;
    }
    setTimeout(refreshQueue, 1000);
  }

  async function refreshQueue() {
    let q;
    try {
      q = await api("/api/operator/withdrawals");
    } catch (e) {
      $("q-status").textContent = e.status === 404 ? "(this worker has no write API)" : e.message;
      if (e.status === 404) clearInterval(state.queueTimer);
      return;
    }
    const list = Array.isArray(q) ? q : (q.withdrawals || q.entries || q.items || []);
    const body = $("queue").tBodies[0];
    body.replaceChildren();
    for (const w of list) {
      const tr = body.insertRow();
      tr.dataset.id = w.withdrawal_id;
      tr.insertCell().textContent = utc(w.requested_ts);
      for (const id of [w.withdrawal_id, w.distributor_id]) {
        const c = tr.insertCell();
        c.textContent = id;
        c.title = id;
      }
      tr.insertCell().textContent = w.channel || "–";
      const amount = tr.insertCell();
      amount.className = "num";
      amount.textContent = yuan(w.amount_cents);
      tr.insertCell().textContent = w.status;
      const cell = tr.insertCell();
      for (const [action, cls] of ACTIONS[w.status] || []) {
        const b = document.createElement("button");
        b.textContent = action;
        b.className = cls;
        b.dataset.action = action;
        b.addEventListener("click", () => act(w, action, b));
        cell.appendChild(b);
      }
    }
    state.queue = list.length;
  }

  async function start() {
    let me;
    try { me = await api("/api/me"); } catch (e) { setStatus(String(e.message), false); return; }
    if (me.role === "operator") {
      $("who").textContent = "operator";
      $("operator").hidden = false;
      follow("/api/feed", "ticker", true);
      refreshLive(); refreshBoard(); refreshQueue();
      setInterval(refreshLive, 2000);
      setInterval(refreshBoard, 5000);
      state.queueTimer = setInterval(refreshQueue, 3000);
      $("lb-metric").addEventListener("change", refreshBoard);
      $("lb-period").addEventListener("change", refreshBoard);
    } else {
      $("who").textContent = "distributor " + me.distributor_id;
      $("distributor").hidden = false;
      follow("/api/distributors/" + encodeURIComponent(me.distributor_id) + "/feed", "my-ticker", false);
      refreshMe(me.distributor_id);
      setInterval(() => refreshMe(me.distributor_id), 2000);
    }
  }
  start();
})();
