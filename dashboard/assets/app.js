// Wattson's dashboard pages: live cards, history, fleet. Served as a file
// (the Content-Security-Policy allows no inline script).
"use strict";
(function () {
  const main = document.getElementById("main");
  const view = document.body.dataset.view;
  const csrf = document.querySelector('meta[name="csrf"]').content;
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === view) a.classList.add("active");
  });

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  async function getJson(url) {
    const r = await fetch(url, { headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  const fmt = (ch, v) => (typeof v !== "number" ? String(v)
    : ch.endsWith("_p") ? v.toFixed(0) : v.toFixed(1));
  const unit = (ch) => (ch.endsWith("_p") ? " W" : ch.endsWith("_v") ? " V" : ch.endsWith("_a") ? " A" : "");

  // ---------------- live ----------------
  async function live() {
    const grid = el("div", { class: "grid", id: "cards" });
    const status = el("p", { class: "info", id: "live-status" }, "loading…");
    main.append(status, grid);
    const init = await getJson("/api/live/init");
    const window_ms = init.window_ms, staleAfter = init.stale_after_ms;
    const devices = new Map();

    function card(device, table, curve) {
      let d = devices.get(device);
      if (d) return d;
      const volts = el("div", { class: "vals volts" });
      const power = el("div", { class: "vals power" });
      const canvas = el("canvas");
      const section = el("section", { class: "card", "data-device": device },
        el("h2", {}, device, el("span", { class: "badge" }, "stale")), volts, power, canvas);
      grid.append(section);
      d = { device, table, curve: curve || null, latest: {}, curves: {}, lastSeen: 0, section, volts, power, canvas, dirty: true, cells: {} };
      devices.set(device, d);
      return d;
    }

    function setValue(d, ch, v) {
      d.latest[ch] = v;
      let cell = d.cells[ch];
      if (!cell) {
        const target = ch.endsWith("_v") ? d.volts : d.power;
        const val = el("span", { class: "v", "data-ch": ch });
        cell = el("div", {}, el("span", { class: "k" }, ch), val, unit(ch));
        target.append(cell);
        d.cells[ch] = val;
        cell = val;
        const n = Object.keys(d.cells).length;
        d.section.classList.toggle("tall", n > 10);
      }
      cell.textContent = fmt(ch, v);
    }

    for (const t of init.tables) {
      for (const [device, series] of Object.entries(t.devices)) {
        const d = card(device, t.table, t.curve);
        for (const [ch, pts] of Object.entries(series)) d.curves[ch] = pts;
      }
      for (const row of t.latest) {
        const d = card(row.device, t.table, t.curve);
        const seen = Date.parse(row.time);
        if (seen > d.lastSeen) d.lastSeen = seen;
        for (const [k, v] of Object.entries(row)) {
          if (k !== "time" && k !== "device" && v !== null) setValue(d, k, v);
        }
      }
    }

    const es = new EventSource("/api/live");
    let events = 0;
    es.onmessage = (m) => {
      const e = JSON.parse(m.data);
      const d = card(e.d, e.tb, null);
      for (const [t, values] of e.r) {
        for (const [ch, v] of Object.entries(values)) {
          setValue(d, ch, v);
          if (typeof v === "number") (d.curves[ch] = d.curves[ch] || []).push([t, v]);
        }
      }
      d.lastSeen = Date.now();
      d.dirty = true;
      events++;
    };
    es.onerror = async () => {
      const r = await fetch("/api/session", { credentials: "same-origin" });
      if (r.status === 401) location.href = "/login";
    };

    function curveOf(d) {
      if (d.curve) return d.curve;
      const names = Object.keys(d.curves);
      const p = names.filter((n) => n.endsWith("_p"));
      return p.length ? p : names;
    }

    function tick() {
      const now = Date.now();
      for (const d of devices.values()) {
        d.section.classList.toggle("stale", now - d.lastSeen > staleAfter);
        if (!d.dirty && now % 5000 > 1000) continue;
        const from = now - window_ms;
        const series = [];
        for (const ch of curveOf(d)) {
          const pts = d.curves[ch] || [];
          while (pts.length && pts[0][0] < from) pts.shift();
          series.push({ name: ch, points: pts });
        }
        WChart.lines(d.canvas, series, { from, to: now });
        d.dirty = false;
      }
      status.textContent = devices.size + " devices, " + events + " live messages";
    }
    tick();
    setInterval(tick, 1000);
  }

  // ---------------- history ----------------
  async function history() {
    const cat = await getJson("/api/catalog");
    const wrap = el("div", { class: "history" });
    main.append(wrap);
    const tableSel = el("select", { id: "h-table" });
    for (const t of cat.tables) tableSel.append(el("option", { value: t.name }, t.name));
    const devSel = el("select", { id: "h-devices", multiple: true });
    const chans = el("div", { class: "chans", id: "h-channels" });
    const fromIn = el("input", { type: "datetime-local", id: "h-from" });
    const toIn = el("input", { type: "datetime-local", id: "h-to" });
    const ranges = { hour: 3600e3, day: 86400e3, month: 30 * 86400e3 };
    let range = null;
    const rangeButtons = Object.keys(ranges).map((k) => {
      const b = el("button", { type: "button", id: "range-" + k }, "Last " + k);
      b.onclick = () => { const now = Date.now(); setRange(now - ranges[k], now); draw(); };
      return b;
    });
    const drawBtn = el("button", { type: "button", id: "h-draw" }, "Draw custom range");
    const resetBtn = el("button", { type: "button", id: "h-reset" }, "Zoom out");
    const info = el("p", { class: "info", id: "h-info" });
    const legend = el("div", { class: "legend" });
    const canvas = el("canvas", { class: "main", id: "h-chart" });
    const bars = el("canvas", { class: "bars", id: "h-kwh" });
    const kwhTitle = el("p", { class: "info" }, "Daily energy (kWh) per appliance");
    const downloads = el("div", { class: "info", id: "h-downloads" });
    wrap.append(
      el("div", { class: "controls" },
        el("fieldset", {}, el("legend", {}, "Table"), tableSel),
        el("fieldset", {}, el("legend", {}, "Devices"), devSel),
        el("fieldset", {}, el("legend", {}, "Channels"), chans),
        el("fieldset", {}, el("legend", {}, "Range"), ...rangeButtons, el("br"), fromIn, toIn, drawBtn, resetBtn)),
      info, legend, canvas, downloads, kwhTitle, bars);

    const toLocal = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 16); };
    function setRange(from, to) { range = { from, to }; fromIn.value = toLocal(from); toIn.value = toLocal(to); }

    function fillTable() {
      const t = cat.tables.find((x) => x.name === tableSel.value);
      devSel.replaceChildren(...(t ? t.devices : []).map((d, i) => el("option", { value: d, selected: i === 0 }, d)));
      chans.replaceChildren(...(t ? t.channels.filter((c) => c.numeric) : []).map((c) =>
        el("label", {}, el("input", { type: "checkbox", value: c.name, checked: t.curve.includes(c.name) }), c.name)));
    }
    tableSel.onchange = fillTable;
    fillTable();

    const selected = () => ({
      table: tableSel.value,
      devices: [...devSel.selectedOptions].map((o) => o.value),
      channels: [...chans.querySelectorAll("input:checked")].map((i) => i.value),
    });

    let outer = null;
    async function draw() {
      const s = selected();
      if (!range || !s.devices.length || !s.channels.length) { info.textContent = "choose a device, channels and a range"; return; }
      const width = Math.max(100, Math.round(canvas.clientWidth));
      info.textContent = "loading…";
      const started = performance.now();
      const series = [];
      let rows = 0;
      for (const device of s.devices) {
        const q = new URLSearchParams({ table: s.table, device, channels: s.channels.join(","), from: range.from, to: range.to, width });
        const h = await getJson("/api/history?" + q);
        rows += h.rows;
        for (const [ch, pts] of Object.entries(h.series)) series.push({ name: device + " " + ch, points: pts });
      }
      WChart.lines(canvas, series, { from: range.from, to: range.to, onZoom: (a, b) => { if (!outer) outer = { ...range }; setRange(a, b); draw(); } });
      legend.replaceChildren(...series.map((s2, i) => { const sw = el("i"); sw.style.background = WChart.PALETTE[i % WChart.PALETTE.length]; return el("span", {}, sw, s2.name); }));
      const points = series.reduce((n, x) => n + x.points.length, 0);
      info.textContent = rows + " readings drawn as " + points + " points in " + Math.round(performance.now() - started) + " ms (drag on the chart to zoom)";
      canvas.dataset.drawn = String(points);
      downloads.replaceChildren("Download: ", ...s.devices.flatMap((device) => ["csv", "parquet"].map((f) => {
        const q = new URLSearchParams({ table: s.table, device, channels: s.channels.join(","), from: range.from, to: range.to, format: f });
        return el("a", { href: "/api/export?" + q, download: device + "." + f, id: "dl-" + f + "-" + device, class: "dl" }, " " + device + "." + f + " ");
      })));
      // kWh comes from power channels only; without one ticked, no bars.
      const power = s.channels.filter((c) => c.endsWith("_p"));
      const q = new URLSearchParams({ table: s.table, device: s.devices[0], channels: power.join(","), from: range.from, to: range.to });
      const k = power.length ? await getJson("/api/kwh?" + q) : { days: [], series: {} };
      const labels = k.days.map((d) => { const x = new Date(d); return (x.getUTCMonth() + 1) + "/" + x.getUTCDate(); });
      WChart.bars(bars, labels, Object.entries(k.series).map(([name, values]) => ({ name, values })));
      bars.dataset.days = String(labels.length);
    }
    drawBtn.onclick = () => { setRange(Date.parse(fromIn.value), Date.parse(toIn.value)); outer = null; draw(); };
    resetBtn.onclick = () => { if (outer) { setRange(outer.from, outer.to); outer = null; draw(); } };
    const now = Date.now();
    setRange(now - ranges.day, now);
  }

  // ---------------- fleet ----------------
  async function fleet() {
    const info = el("p", { class: "info" });
    const table = el("table", { class: "fleet", id: "fleet" });
    main.append(info, table);
    async function load() {
      const f = await getJson("/api/fleet");
      const head = el("tr", {}, ...["device", "table", "last seen", "readings/s (1 min)", "readings", "rejected", "last rejection", "on disk", "months"].map((h) => el("th", {}, h)));
      const rows = f.devices.map((d) => el("tr", { "data-device": d.device },
        el("td", {}, d.device), el("td", {}, d.table || "—"),
        el("td", {}, d.last_seen ? new Date(d.last_seen).toLocaleString() : "never"),
        el("td", {}, (d.rate_per_s || 0).toFixed(2)), el("td", {}, String(d.readings ?? 0)),
        el("td", {}, String(d.rejected ?? 0)), el("td", {}, d.last_rejection || ""),
        el("td", {}, d.bytes_on_disk == null ? "buffered" : (d.bytes_on_disk / 1024).toFixed(1) + " KiB"),
        el("td", {}, String(d.months ?? 0))));
      table.replaceChildren(head, ...rows);
      info.textContent = f.devices.length + " device rows, updated " + new Date(f.now).toLocaleTimeString();
    }
    await load();
    setInterval(load, 10000);
  }

  const run = { live, history, fleet }[view];
  if (run) run().catch((e) => { main.append(el("p", { class: "error" }, String(e.message || e))); });
})();
