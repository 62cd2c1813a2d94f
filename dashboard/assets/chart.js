// A small canvas chart: lines (time series) and grouped bars. Written for
// Wattson; draws thousands of points per frame without a library.
"use strict";
(function () {
  const PALETTE = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285",
    "#c2255c", "#5c940d", "#364fc7", "#a61e4d", "#087f5b", "#495057"];

  function setup(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, w, h };
  }

  function fmtNum(v) {
    const a = Math.abs(v);
    if (a >= 1000) return (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
    if (a >= 10) return v.toFixed(0);
    return v.toFixed(a >= 1 ? 1 : 2);
  }

  function fmtTime(ms, span) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    const hm = p(d.getHours()) + ":" + p(d.getMinutes());
    if (span <= 2 * 3600e3) return hm + ":" + p(d.getSeconds());
    if (span <= 2 * 86400e3) return hm;
    return (d.getMonth() + 1) + "/" + d.getDate() + " " + hm;
  }

  // series: [{name, points: [[t, v], ...]}]; opts: {from, to, onZoom(from, to)}
  function lines(canvas, series, opts) {
    const { ctx, w, h } = setup(canvas);
    const L = 42, R = 6, T = 6, B = 18;
    let from = opts.from, to = opts.to;
    let lo = Infinity, hi = -Infinity, count = 0;
    for (const s of series) {
      for (const p of s.points) {
        if (p[0] < from || p[0] > to) continue;
        if (p[1] < lo) lo = p[1];
        if (p[1] > hi) hi = p[1];
        count++;
      }
    }
    if (!count) { lo = 0; hi = 1; }
    if (hi === lo) { hi += 1; lo -= 1; }
    const pad = (hi - lo) * 0.05; hi += pad; lo -= pad;
    const x = (t) => L + (t - from) / (to - from) * (w - L - R);
    const y = (v) => T + (hi - v) / (hi - lo) * (h - T - B);
    ctx.strokeStyle = "#e3e5ea"; ctx.fillStyle = "#667"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = lo + (hi - lo) * i / 4, yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(w - R, yy); ctx.stroke();
      ctx.fillText(fmtNum(v), 2, yy + 4);
    }
    const span = to - from;
    for (let i = 0; i <= 4; i++) {
      const t = from + span * i / 4;
      const label = fmtTime(t, span);
      const tw = ctx.measureText(label).width;
      ctx.fillText(label, Math.min(Math.max(x(t) - tw / 2, L), w - R - tw), h - 4);
    }
    series.forEach((s, i) => {
      ctx.strokeStyle = s.color || PALETTE[i % PALETTE.length];
      ctx.lineWidth = 1.25;
      ctx.beginPath();
      let started = false;
      for (const p of s.points) {
        if (p[0] < from || p[0] > to) continue;
        const xx = x(p[0]), yy = y(p[1]);
        if (started) ctx.lineTo(xx, yy); else { ctx.moveTo(xx, yy); started = true; }
      }
      ctx.stroke();
    });
    canvas.dataset.points = String(count);
    if (opts.onZoom && !canvas.dataset.zoomable) {
      canvas.dataset.zoomable = "1";
      let startX = null;
      canvas.addEventListener("mousedown", (e) => { startX = e.offsetX; });
      canvas.addEventListener("mouseup", (e) => {
        if (startX === null) return;
        const a = Math.min(startX, e.offsetX), b = Math.max(startX, e.offsetX);
        startX = null;
        if (b - a < 5) return;
        const cur = canvas._range;
        const t = (px) => cur.from + (px - L) / (canvas.clientWidth - L - R) * (cur.to - cur.from);
        canvas._onZoom(Math.round(t(a)), Math.round(t(b)));
      });
    }
    canvas._range = { from, to };
    canvas._onZoom = opts.onZoom;
  }

  // labels: [string]; series: [{name, values: [number|null]}]
  function bars(canvas, labels, series) {
    const { ctx, w, h } = setup(canvas);
    const L = 42, R = 6, T = 6, B = 18;
    let hi = 0;
    for (const s of series) for (const v of s.values) if (v > hi) hi = v;
    if (hi <= 0) hi = 1;
    const y = (v) => T + (hi - v) / hi * (h - T - B);
    ctx.fillStyle = "#667"; ctx.strokeStyle = "#e3e5ea";
    for (let i = 0; i <= 4; i++) {
      const v = hi * i / 4, yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(w - R, yy); ctx.stroke();
      ctx.fillText(fmtNum(v), 2, yy + 4);
    }
    const group = (w - L - R) / Math.max(labels.length, 1);
    const bw = Math.max(1, (group * 0.8) / Math.max(series.length, 1));
    labels.forEach((label, i) => {
      series.forEach((s, j) => {
        const v = s.values[i];
        if (v == null || v <= 0) return;
        ctx.fillStyle = PALETTE[j % PALETTE.length];
        const xx = L + i * group + group * 0.1 + j * bw;
        ctx.fillRect(xx, y(v), bw, y(0) - y(v));
      });
      if (labels.length <= 16 || i % Math.ceil(labels.length / 16) === 0) {
        ctx.fillStyle = "#667";
        ctx.fillText(label, L + i * group, h - 4);
      }
    });
  }

  window.WChart = { lines, bars, PALETTE };
})();
