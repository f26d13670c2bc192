// pipe ui: sorting and filtering the runs table, picking runs to compare, the log loss
// axis (remembered), and live curves over server-sent events. No third-party code.
"use strict";

function sortTable(table, col, th) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  const key = (tr) => {
    const td = tr.cells[col + 1];
    const v = td.dataset.v;
    return v !== undefined && v !== "" ? parseFloat(v) : td.textContent.trim();
  };
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const xn = typeof x === "number" && !isNaN(x), yn = typeof y === "number" && !isNaN(y);
    if (xn && yn) return dir * (x - y);
    if (xn !== yn) return xn ? -1 : 1; // runs without the value go last
    return dir * String(x).localeCompare(String(y), undefined, { numeric: true });
  });
  for (const r of rows) body.appendChild(r);
}

function filterRows(table) {
  const text = (document.getElementById("filter").value || "").toLowerCase();
  const state = document.getElementById("state-filter").value;
  for (const tr of table.tBodies[0].rows) {
    const show = tr.dataset.name.toLowerCase().includes(text) && (!state || tr.dataset.state === state);
    tr.classList.toggle("hidden", !show);
  }
}

function setupRuns() {
  const table = document.getElementById("runs");
  if (!table) return;
  for (const th of table.tHead.rows[0].cells) {
    if (th.dataset.col === undefined) continue;
    th.addEventListener("click", () => sortTable(table, parseInt(th.dataset.col, 10), th));
  }
  document.getElementById("filter").addEventListener("input", () => filterRows(table));
  document.getElementById("state-filter").addEventListener("change", () => filterRows(table));
  const varying = document.getElementById("varying");
  varying.checked = localStorage.getItem("pipe.varying") === "1";
  table.classList.toggle("varying", varying.checked);
  varying.addEventListener("change", () => {
    table.classList.toggle("varying", varying.checked);
    localStorage.setItem("pipe.varying", varying.checked ? "1" : "0");
  });
}

// "compare selected": the runs ticked in any table (pipelines as they stand, recorded runs).
function setupCompare() {
  const compare = document.getElementById("compare");
  if (!compare) return;
  if (!compare.dataset.href) { compare.hidden = true; return; }
  compare.addEventListener("click", () => {
    const picked = Array.from(document.querySelectorAll("td.pick input:checked")).map((i) => i.value);
    if (picked.length < 1) return;
    const q = new URLSearchParams();
    for (const n of picked) q.append("run", n);
    location.href = "/compare?" + q.toString();
  });
}

function setupCurves() {
  const body = document.body;
  const box = document.getElementById("curves");
  const log = document.getElementById("logloss");
  if (!box || !body.dataset.curves) return;
  const url = body.dataset.curves;
  let busy = false;
  const redraw = () => {
    if (busy) return;
    busy = true;
    fetch(url + (log && log.checked ? "?log=1" : ""))
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((svg) => { box.innerHTML = svg; })
      .catch(() => {})
      .finally(() => { busy = false; });
  };
  if (log) {
    log.checked = localStorage.getItem("pipe.logloss") === "1";
    if (log.checked) redraw();
    log.addEventListener("change", () => {
      localStorage.setItem("pipe.logloss", log.checked ? "1" : "0");
      redraw();
    });
  }
  if (!body.dataset.events || !window.EventSource) return;
  const progress = document.getElementById("progress");
  const es = new EventSource(body.dataset.events);
  es.addEventListener("epoch", (e) => {
    const d = JSON.parse(e.data);
    if (progress) {
      progress.textContent = d.text;
      const before = parseInt(progress.dataset.epochs || "0", 10);
      progress.dataset.epochs = String(d.epochs);
      if (d.epochs === before && box.querySelector("svg")) return;
    }
    redraw();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupRuns();
  setupCompare();
  setupCurves();
});
