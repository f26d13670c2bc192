// pipe ui: the charts, drawn by Apache ECharts (assets/echarts.min.js, embedded in the
// binary). The data comes with the page, in <script type="application/json"> blocks, so
// the charts work the same served and from an exported folder (file://).
//
// Curves (#curves): loss, accuracy and learning rate against epoch or wall time; several
// runs overlaid with a legend; each run's own lr drops; smoothing (TensorBoard's debiased
// exponential moving average); log or linear loss axis; zoom and pan (wheel, drag, the
// slider); values on hover. Live pages redraw on each new epoch (server-sent events).
//
// Parallel coordinates (#parallel): one line per sweep point, translucent, the best on
// top, pruned points dashed; brushing an axis filters the points table.
"use strict";

window.PIPE = window.PIPE || {};

function num(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && a < 1e-3) return Number(v.toPrecision(3)).toExponential().replace("e+", "e");
  if (a >= 1e5) return v.toExponential(2).replace("e+", "e");
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  if (a >= 100) return v.toFixed(1);
  return String(Number(v.toPrecision(4)));
}

function lrText(v) {
  if (!(v > 0)) return String(v);
  return Number(v.toPrecision(3)).toExponential().replace("e+", "e");
}

function pctText(v) {
  return v === null || v === undefined || !isFinite(v) ? "–" : (100 * v).toFixed(2) + " %";
}

function secsText(s) {
  if (!isFinite(s)) return "–";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(2) + " h";
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function ema(ys, w) {
  if (!(w > 0)) return ys;
  let last = 0;
  let n = 0;
  return ys.map((y) => {
    if (y === null || !isFinite(y)) return y;
    n += 1;
    last = last * w + (1 - w) * y;
    return last / (1 - Math.pow(w, n));
  });
}

// Remembered settings (ui.js's helpers: no storage under file:// is no error).
const stored = (key, fallback) => window.PIPE.remembered(key, fallback);
const store = (key, value) => window.PIPE.remember(key, value);

function dataBlock(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

// A run's x values: epochs, or the wall time at each epoch's end (seconds from its start).
function xsOf(run, mode) {
  if (mode !== "time") return run.epochs.map((e) => e.epoch);
  let t = 0;
  return run.epochs.map((e) => (t += e.seconds || 0));
}

// Where a run's learning rate dropped: the first epoch of each later segment (an lr-drop
// or a resume stage), and a step of a stage's own (`schedule = "step"`: the rate held on
// both sides). A schedule that moves the rate every epoch (poly, cosine, onecycle) is a
// curve on the lr chart, not a line per epoch.
function dropsOf(run) {
  const out = [];
  const e = run.epochs;
  for (let i = 1; i < e.length; i++) {
    const segment = e[i].stage !== e[i - 1].stage;
    const held = (i < 2 || e[i - 1].lr === e[i - 2].lr) && (i + 1 >= e.length || e[i + 1].lr === e[i].lr);
    if (segment || (e[i].lr !== e[i - 1].lr && held && e[i].stage === e[i - 1].stage)) {
      out.push({ at: i, lr: e[i].lr });
    }
  }
  return out;
}

// Where each run's lr-drop label sits on its line, so that runs dropping at the same
// epoch do not write over each other.
const DROP_LABEL = ["insideEndTop", "insideEndBottom", "insideMiddleTop", "insideMiddleBottom", "insideStartTop", "insideStartBottom"];

function curveOption(data, panel, st) {
  const time = st.x === "time";
  const series = [];
  data.runs.forEach((run, i) => {
    const colour = run.colour;
    const xs = xsOf(run, st.x);
    const pts = (ys) => ys.map((y, k) => [xs[k], y]);
    const lines = [];
    if (panel === "lr") {
      lines.push({ key: "lr", ys: run.epochs.map((e) => e.lr), dashed: false });
    } else {
      const m = panel === "loss" ? "loss" : "acc";
      lines.push({ key: "train_" + m, ys: run.epochs.map((e) => e["train_" + m]), dashed: true });
      lines.push({ key: "val_" + m, ys: run.epochs.map((e) => e["val_" + m]), dashed: false });
    }
    for (const l of lines) {
      const smooth = panel !== "lr" && st.smooth > 0;
      if (smooth) {
        series.push({
          name: run.name,
          type: "line",
          data: pts(l.ys),
          silent: true,
          symbol: "none",
          lineStyle: { color: colour, width: 1, opacity: 0.25, type: l.dashed ? "dashed" : "solid" },
          itemStyle: { color: colour },
          tooltip: { show: false },
          z: 1,
          id: run.name + "/" + l.key + "/raw",
        });
      }
      const s = {
        name: run.name,
        id: run.name + "/" + l.key,
        type: "line",
        data: pts(smooth ? ema(l.ys, st.smooth) : l.ys),
        showSymbol: !l.dashed && run.epochs.length <= 60,
        symbolSize: 5,
        step: panel === "lr" ? "end" : false,
        lineStyle: { color: colour, width: 2, type: l.dashed ? "dashed" : "solid" },
        itemStyle: { color: colour },
        z: 2,
      };
      if (!l.dashed) {
        const drops = dropsOf(run).map((d) => ({
          xAxis: time ? xs[d.at - 1] : run.epochs[d.at].epoch - 0.5,
          label: { formatter: "lr " + lrText(d.lr), color: colour, position: DROP_LABEL[i % DROP_LABEL.length] },
          lineStyle: { color: colour },
        }));
        if (drops.length) {
          s.markLine = {
            symbol: "none",
            silent: true,
            lineStyle: { type: "dotted", width: 1 },
            label: { fontSize: 11 },
            data: drops,
          };
        }
      }
      series.push(s);
    }
  });
  const yFmt = panel === "acc" ? pctText : panel === "lr" ? lrText : num;
  const title = { loss: "loss", acc: "accuracy", lr: "learning rate" }[panel];
  return {
    animation: false,
    title: { text: title, left: 8, top: 0, textStyle: { fontSize: 13, fontWeight: "normal" } },
    legend: panel === "loss" ? { top: 0, right: 8, type: "scroll", data: data.runs.map((r) => r.name) } : undefined,
    grid: { left: 64, right: 24, top: 30, bottom: panel === "lr" ? 56 : 28 },
    tooltip: {
      trigger: "axis",
      valueFormatter: yFmt,
      axisPointer: { type: "line" },
    },
    xAxis: {
      type: "value",
      name: time ? "wall time" : "epoch",
      nameLocation: "end",
      nameGap: 4,
      min: "dataMin",
      max: "dataMax",
      minInterval: time ? 0 : 1,
      axisLabel: { formatter: time ? secsText : (v) => String(v) },
    },
    yAxis: {
      type: (panel === "loss" && st.log) || panel === "lr" ? "log" : "value",
      scale: true,
      axisLabel: { formatter: yFmt },
      splitLine: { lineStyle: { color: "#eee" } },
    },
    dataZoom: [
      { type: "inside", xAxisIndex: 0, filterMode: "none" },
      ...(panel === "lr" ? [{ type: "slider", xAxisIndex: 0, height: 18, bottom: 6, filterMode: "none", labelFormatter: time ? secsText : (v) => num(v) }] : []),
    ],
    series,
  };
}

function setupCurves() {
  const box = document.getElementById("curves");
  let data = dataBlock("curve-data");
  if (!box || !data || !window.echarts) return;
  const smooth = document.getElementById("smooth");
  const smoothOut = document.getElementById("smooth-value");
  const log = document.getElementById("logloss");
  const xmode = document.getElementById("xaxis");
  const st = {
    smooth: Math.min(0.99, Math.max(0, parseFloat(stored("pipe.smooth", "0")) || 0)),
    log: stored("pipe.logloss", "0") === "1",
    x: stored("pipe.xaxis", "epoch") === "time" ? "time" : "epoch",
  };
  const panels = ["loss", "acc", "lr"];
  const charts = {};
  for (const p of panels) {
    const el = document.getElementById("chart-" + p);
    charts[p] = echarts.init(el, null, { renderer: "canvas" });
  }
  echarts.connect(panels.map((p) => charts[p]));
  const hasTime = () => data.runs.some((r) => r.epochs.some((e) => e.seconds > 0));
  const render = () => {
    if (st.x === "time" && !hasTime()) st.x = "epoch";
    for (const p of panels) charts[p].setOption(curveOption(data, p, st), { notMerge: true });
    box.dataset.epochs = String(data.runs.reduce((n, r) => n + r.epochs.length, 0));
    box.dataset.smooth = String(st.smooth);
    box.dataset.x = st.x;
    box.dataset.log = st.log ? "1" : "0";
  };
  if (smooth) {
    smooth.value = String(st.smooth);
    if (smoothOut) smoothOut.textContent = st.smooth.toFixed(2);
    smooth.addEventListener("input", () => {
      st.smooth = parseFloat(smooth.value) || 0;
      if (smoothOut) smoothOut.textContent = st.smooth.toFixed(2);
      store("pipe.smooth", String(st.smooth));
      render();
    });
  }
  if (log) {
    log.checked = st.log;
    log.addEventListener("change", () => {
      st.log = log.checked;
      store("pipe.logloss", st.log ? "1" : "0");
      render();
    });
  }
  if (xmode) {
    xmode.value = st.x;
    xmode.addEventListener("change", () => {
      st.x = xmode.value === "time" ? "time" : "epoch";
      store("pipe.xaxis", st.x);
      render();
    });
  }
  render();
  window.addEventListener("resize", () => panels.forEach((p) => charts[p].resize()));
  const replace = (d) => {
    if (JSON.stringify(d) === JSON.stringify(data)) return;
    data = d;
    render();
  };
  window.PIPE.curves = { charts, state: st, render, replace, data: () => data, ready: performance.now() };

  // Live: each new epoch redraws the charts, the stage table and the DAG; a finished
  // training closes the stream.
  const body = document.body;
  if (!body.dataset.events || !window.EventSource) return;
  const progress = document.getElementById("progress");
  const es = new EventSource(body.dataset.events);
  let busy = false;
  const refresh = () => {
    if (busy || !data.live) return;
    busy = true;
    fetch(data.live)
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((d) => {
        data = d;
        render();
      })
      .catch(() => {})
      .finally(() => {
        busy = false;
      });
  };
  es.addEventListener("epoch", (e) => {
    const d = JSON.parse(e.data);
    if (progress) progress.textContent = d.text;
    refresh();
    if (window.PIPE.refreshStages) window.PIPE.refreshStages();
  });
  es.addEventListener("done", (e) => {
    es.close();
    body.dataset.closed = "1";
    if (progress) progress.textContent = JSON.parse(e.data).text;
    refresh();
    if (window.PIPE.refreshStages) window.PIPE.refreshStages();
  });
}

// Parallel coordinates of a sweep.
function parallelOption(d) {
  const axes = d.axes.map((a, dim) => {
    const ax = { id: "axis" + dim, dim, name: a.name, nameTextStyle: { fontSize: 12 } };
    if (a.categories) {
      ax.type = "category";
      ax.data = a.categories;
    } else {
      ax.type = a.log ? "log" : "value";
      ax.scale = true;
      ax.axisLabel = { formatter: a.log ? lrText : num };
    }
    if (dim === d.axes.length - 1) ax.nameTextStyle = { fontSize: 12, fontWeight: "bold" };
    return ax;
  });
  const item = (l) => ({ name: l.name, value: l.values });
  const group = (pred) => d.lines.filter(pred).map(item);
  const n = d.lines.length;
  const alpha = n > 300 ? 0.12 : n > 50 ? 0.3 : 0.7;
  return {
    animation: false,
    parallelAxis: axes,
    parallel: {
      left: 60,
      right: 90,
      top: 40,
      bottom: 30,
      parallelAxisDefault: { realtime: true, areaSelectStyle: { width: 14 } },
    },
    // A formatter's string is set as HTML: the point's name (its sweep's name is the
    // user's) is escaped.
    tooltip: { trigger: "item", formatter: (p) => escapeHtml(p.name) },
    series: [
      {
        id: "points",
        name: "points",
        type: "parallel",
        data: group((l) => !l.best && !l.pruned),
        lineStyle: { color: "#1f77b4", width: 1, opacity: alpha },
        inactiveOpacity: 0.03,
        activeOpacity: 1,
        z: 1,
      },
      {
        id: "pruned",
        name: "pruned",
        type: "parallel",
        data: group((l) => !l.best && l.pruned),
        lineStyle: { color: "#888", width: 1, type: "dashed", opacity: alpha },
        inactiveOpacity: 0.03,
        activeOpacity: 1,
        z: 2,
      },
      {
        id: "best",
        name: "best",
        type: "parallel",
        data: group((l) => l.best),
        lineStyle: { color: "#d62728", width: 3, opacity: 1 },
        inactiveOpacity: 0.15,
        activeOpacity: 1,
        z: 10,
      },
    ],
  };
}

function setupParallel() {
  const el = document.getElementById("parallel");
  const d = dataBlock("parallel-data");
  if (!el || !d || !window.echarts) return;
  const chart = echarts.init(el, null, { renderer: "canvas" });
  chart.setOption(parallelOption(d));
  const table = document.getElementById("points");
  const shown = document.getElementById("points-shown");
  const filter = () => {
    const keep = new Set();
    for (const s of chart.getModel().getSeries()) {
      const names = s.getData();
      for (const i of s.getRawIndicesByActiveState("active")) keep.add(names.getName(i));
    }
    let n = 0;
    if (table) {
      for (const tr of table.tBodies[0].rows) {
        const on = keep.has(tr.dataset.name);
        tr.classList.toggle("hidden", !on);
        n += on ? 1 : 0;
      }
    }
    if (shown) shown.textContent = n === d.lines.length ? "" : n + " of " + d.lines.length + " points in the brushed ranges";
    el.dataset.active = String(keep.size);
  };
  chart.on("axisareaselected", filter);
  chart.on("click", (p) => {
    const l = d.lines.find((x) => x.name === p.name);
    if (l && l.href) location.href = l.href;
  });
  window.addEventListener("resize", () => chart.resize());
  el.dataset.active = String(d.lines.length);
  window.PIPE.parallel = { chart, filter, ready: performance.now() };
}

document.addEventListener("DOMContentLoaded", () => {
  setupCurves();
  setupParallel();
});

/** `s` with the characters HTML gives a meaning to written as entities. */
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
