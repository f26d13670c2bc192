// pipe ui: sorting and filtering the runs table, picking runs to compare, and the live
// stage table. The charts are charts.js's (drawn with ECharts).
"use strict";

// Sort by a column. A metric's first click puts the best first (highest accuracy, lowest
// loss); a second click reverses. Rows without the value go last either way.
function sortTable(table, col, th, again) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const now = th.getAttribute("aria-sort");
  const first = th.dataset.best === "max" ? -1 : 1;
  let dir = now === null ? first : now === "ascending" ? -1 : 1;
  if (again && now !== null) dir = now === "ascending" ? 1 : -1; // keep the order shown
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

// "Only columns that vary": a column whose cells are all the same among the rows shown
// (after the filters) is marked const, and hidden while the box is ticked.
function markConstant(table) {
  const rows = Array.from(table.tBodies[0].rows).filter((r) => !r.classList.contains("hidden"));
  const heads = table.tHead.rows[0].cells;
  for (let c = 2; c < heads.length; c++) {
    const first = rows.length ? rows[0].cells[c].textContent : "";
    const same = rows.length > 1 && rows.every((r) => r.cells[c].textContent === first);
    heads[c].classList.toggle("const", same);
    for (const r of table.tBodies[0].rows) r.cells[c].classList.toggle("const", same);
  }
}

function filterRows(table) {
  const text = (document.getElementById("filter").value || "").toLowerCase();
  const state = document.getElementById("state-filter").value;
  for (const tr of table.tBodies[0].rows) {
    const show = tr.dataset.name.toLowerCase().includes(text) && (!state || tr.dataset.state === state);
    tr.classList.toggle("hidden", !show);
  }
  markConstant(table);
}

function remembered(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : v;
  } catch (e) {
    return fallback;
  }
}

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (e) {
    /* no storage (file://): not remembered */
  }
}

// The column chooser: unticked columns are hidden, and remembered by name.
function setupColumns(table) {
  const box = document.getElementById("columns");
  if (!box) return;
  let off = [];
  try {
    off = JSON.parse(remembered("pipe.columns.off", "[]"));
  } catch (e) {
    off = [];
  }
  const heads = Array.from(table.tHead.rows[0].cells);
  const apply = () => {
    heads.forEach((th, c) => {
      if (!th.dataset.h) return;
      const hide = off.includes(th.dataset.h);
      th.classList.toggle("off", hide);
      for (const r of table.tBodies[0].rows) r.cells[c].classList.toggle("off", hide);
    });
  };
  if (box.dataset.ready) {
    apply();
    return;
  }
  box.dataset.ready = "1";
  for (const cb of box.querySelectorAll("input[type=checkbox]")) {
    cb.checked = !off.includes(cb.value);
    cb.addEventListener("change", () => {
      off = off.filter((h) => h !== cb.value);
      if (!cb.checked) off.push(cb.value);
      remember("pipe.columns.off", JSON.stringify(off));
      apply();
    });
  }
  apply();
}

// A click on a column's head sorts by it.
function bindSorting(table) {
  for (const th of table.tHead.rows[0].cells) {
    if (th.dataset.col === undefined) continue;
    th.addEventListener("click", () => sortTable(table, parseInt(th.dataset.col, 10), th));
  }
}

// What names a column head across refreshes.
function headKey(th) {
  return th.dataset.h || th.textContent.trim();
}

function setupRuns() {
  const table = document.getElementById("runs");
  if (!table) return;
  bindSorting(table);
  document.getElementById("filter").addEventListener("input", () => filterRows(table));
  document.getElementById("state-filter").addEventListener("change", () => filterRows(table));
  const varying = document.getElementById("varying");
  varying.checked = remembered("pipe.varying", "1") === "1";
  table.classList.toggle("varying", varying.checked);
  varying.addEventListener("change", () => {
    table.classList.toggle("varying", varying.checked);
    remember("pipe.varying", varying.checked ? "1" : "0");
  });
  markConstant(table);
  setupColumns(table);
  liveRuns(table);
}

// The page fetched again, parsed (no script of it runs); `null` when it is the same as
// the last time it was fetched, so that an unchanged page costs no parsing.
let lastPage = null;
function fetchPage() {
  return fetch(location.href, { cache: "no-store" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((html) => {
      if (html === lastPage) return null;
      lastPage = html;
      return new DOMParser().parseFromString(html, "text/html");
    });
}

// Served pages look again every few seconds while visible (an exported folder does not):
// the runs table keeps its sort, filters, ticks and columns; the recorded runs follow.
const LIVE_MS = 4000;
function liveEvery(f) {
  if (location.protocol === "file:") return;
  let busy = false;
  setInterval(() => {
    if (busy || document.hidden) return;
    busy = true;
    f().catch(() => {}).finally(() => {
      busy = false;
    });
  }, LIVE_MS);
}

function liveRuns(table) {
  liveEvery(() =>
    fetchPage().then((doc) => {
      if (!doc) return;
      const fresh = doc.getElementById("runs");
      if (!fresh) return;
      const ticked = new Set(Array.from(table.querySelectorAll("td.pick input:checked")).map((i) => i.value));
      const body = document.importNode(fresh.tBodies[0], true);
      for (const i of body.querySelectorAll("td.pick input")) i.checked = ticked.has(i.value);
      // The columns come from the runs (a first evaluation, a new swept key): when they
      // changed, the new heads come with the new rows, the sort follows its column by
      // name, and the column chooser lists the new set.
      const heads = (t) => Array.from(t.tHead.rows[0].cells).map(headKey).join("\u0001");
      const before = Array.from(table.tHead.rows[0].cells).find((h) => h.hasAttribute("aria-sort"));
      const sortedBy = before ? [headKey(before), before.getAttribute("aria-sort")] : null;
      if (heads(fresh) !== heads(table)) {
        table.replaceChild(document.importNode(fresh.tHead, true), table.tHead);
        bindSorting(table);
        const box = document.getElementById("columns");
        const theirs = doc.getElementById("columns");
        if (box && theirs) {
          box.replaceWith(document.importNode(theirs, true));
        }
        if (sortedBy) {
          const th = Array.from(table.tHead.rows[0].cells).find((h) => headKey(h) === sortedBy[0]);
          if (th) th.setAttribute("aria-sort", sortedBy[1]);
        }
      }
      table.replaceChild(body, table.tBodies[0]);
      const sorted = Array.from(table.tHead.rows[0].cells).find((h) => h.hasAttribute("aria-sort"));
      if (sorted) sortTable(table, parseInt(sorted.dataset.col, 10), sorted, true);
      filterRows(table);
      setupColumns(table);
      for (const id of ["summary", "best-so-far", "recorded"]) {
        const here = document.querySelector("." + id);
        const there = doc.querySelector("." + id);
        if (here && there) here.replaceWith(document.importNode(there, true));
      }
      table.dataset.refreshed = String(Date.now());
    })
  );
}

// The compare page: its metrics table and its runs' curves, looked at again.
function liveCompare() {
  const metrics = document.querySelector("table.metrics");
  if (!metrics || !document.getElementById("curve-data") || document.body.dataset.page !== "compare") return;
  liveEvery(() =>
    fetchPage().then((doc) => {
      if (!doc) return;
      const m = doc.querySelector("table.metrics");
      const here = document.querySelector("table.metrics");
      if (m && here) here.replaceWith(document.importNode(m, true));
      const d = doc.getElementById("curve-data");
      if (d && PIPE.curves) PIPE.curves.replace(JSON.parse(d.textContent));
      document.body.dataset.refreshed = String(Date.now());
    })
  );
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

// The run page's stage table and DAG, fetched again (after an epoch, when a training
// ends): the page itself is asked for, and its #stages section swapped in.
const PIPE = (window.PIPE = window.PIPE || {});
// Shared with charts.js (loaded after this script).
PIPE.remembered = remembered;
PIPE.remember = remember;
PIPE.refreshStages = () => {
  const here = document.getElementById("stages");
  if (!here || PIPE.refreshing) return;
  PIPE.refreshing = true;
  fetch(location.href, { cache: "no-store" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((html) => {
      const doc = new DOMParser().parseFromString(html, "text/html");
      const fresh = doc.getElementById("stages");
      if (fresh) here.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
    })
    .catch(() => {})
    .finally(() => {
      PIPE.refreshing = false;
    });
};

document.addEventListener("DOMContentLoaded", () => {
  setupRuns();
  setupCompare();
  liveCompare();
});
