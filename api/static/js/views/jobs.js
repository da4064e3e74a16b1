// The jobs table: live (polled), filtered by status on the service, searched on the page.

import { api } from "../api.js";
import { h, replace, setText, setTitle } from "../dom.js";
import { age, between, bytes, duration, fullTime, shortId, STATUSES } from "../format.js";
import {
  badge,
  errorLine,
  labelChips,
  poll,
  progressBar,
  updateBadge,
  updateProgress,
} from "../widgets.js";

const PAGE = 100;
const REFRESH_MS = 2000;
// Kept across visits to the page, so going back to the list keeps the filter.
const state = { status: "", search: "", offset: 0 };

export function jobsView(main) {
  const rows = new Map(); // job id -> {tr, update(job)}
  const error = errorLine();
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by status" });
  const search = h("input", {
    type: "search",
    placeholder: "Search name, id, image, agent…",
    value: state.search,
    "aria-label": "Search jobs",
    oninput: () => {
      state.search = search.value;
      applySearch();
    },
  });
  const tbody = h("tbody");
  const emptyRow = h("tr", { class: "empty" }, h("td", { colspan: "8" }));
  const pagerText = h("span", { class: "muted" });
  const prev = h("button", { type: "button", text: "‹ Newer", onclick: () => move(-PAGE) });
  const next = h("button", { type: "button", text: "Older ›", onclick: () => move(PAGE) });
  let latest = { items: [], total: 0 };
  let counts = {};

  replace(
    main,
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h1", { text: "Jobs" }),
        h("span", { class: "spacer" }),
        h("a", { class: "button primary", href: "#/submit", text: "New job" }),
      ),
      error.el,
      h("div", { class: "toolbar" }, chips, search),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "jobs" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Job", "Status", "Progress", "GPUs", "Resources", "Agent", "Age", "Ran"].map(
                (title) => h("th", { text: title, scope: "col" }),
              ),
            ),
          ),
          tbody,
        ),
      ),
      h("div", { class: "pager" }, pagerText, h("span", { class: "spacer" }), prev, next),
    ),
  );

  function move(delta) {
    state.offset = Math.max(0, state.offset + delta);
    poller.now();
  }

  function drawChips() {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    replace(
      chips,
      [["", "all", total], ...STATUSES.map((s) => [s, s, counts[s] || 0])].map(
        ([value, label, n]) =>
          h(
            "button",
            {
              type: "button",
              class: `chip ${value === state.status ? "active" : ""} status-${label}`,
              "aria-pressed": value === state.status ? "true" : "false",
              dataset: { status: label },
              onclick: () => {
                state.status = value;
                state.offset = 0;
                drawChips();
                poller.now();
              },
            },
            label,
            h("span", { class: "count", text: n }),
          ),
      ),
    );
  }

  async function refresh() {
    const [page, stats] = await Promise.all([
      api("jobs", { query: { status: state.status, limit: PAGE, offset: state.offset } }),
      api("stats"),
    ]);
    error.show(null);
    counts = stats.counts || {};
    drawChips();
    latest = page;
    draw();
  }

  function draw() {
    const seen = new Set();
    for (const job of latest.items) {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = jobRow(job.id);
        rows.set(job.id, row);
      }
      row.update(job);
      tbody.append(row.tr); // appending an existing row moves it: the order follows the page
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    const first = latest.total ? state.offset + 1 : 0;
    const last = state.offset + latest.items.length;
    setText(pagerText, `${first}–${last} of ${latest.total}`);
    prev.disabled = state.offset === 0;
    next.disabled = last >= latest.total;
    applySearch();
  }

  function applySearch() {
    const needle = state.search.trim().toLowerCase();
    let shown = 0;
    for (const row of rows.values()) {
      const match = !needle || row.haystack.includes(needle);
      row.tr.hidden = !match;
      if (match) shown += 1;
    }
    emptyRow.remove();
    if (!shown) {
      setText(
        emptyRow.firstChild,
        latest.total === 0 && !state.status
          ? "No jobs yet. Submit one with “New job”."
          : "No job on this page matches.",
      );
      tbody.append(emptyRow);
    }
  }

  const poller = poll(refresh, REFRESH_MS, (e) => error.show(e));
  drawChips();
  return { close: () => poller.stop() };
}

function jobRow(id) {
  const link = h("a", { href: `#/jobs/${id}` });
  const sub = h("div", { class: "muted small mono" });
  const labels = h("div");
  let labelsShown = "";
  const status = badge("");
  const statusNote = h("div", { class: "muted small" });
  const bar = progressBar();
  const gpus = h("td", { class: "num" });
  const resources = h("td", { class: "nowrap" });
  const agent = h("td", { class: "mono small" });
  const created = h("td", { class: "nowrap" });
  const ran = h("td", { class: "nowrap" });
  const tr = h(
    "tr",
    { dataset: { jobId: id } },
    h("td", { class: "job-cell" }, link, sub, labels),
    h("td", {}, status, statusNote),
    h("td", { class: "progress-cell" }, bar.el),
    gpus,
    resources,
    agent,
    created,
    ran,
  );
  const row = { tr, haystack: "" };
  row.update = (job) => {
    setText(link, job.name || "(unnamed)");
    setText(sub, `${shortId(job.id)} · ${job.image}`);
    updateBadge(status, job.status);
    tr.dataset.status = job.status;
    const note = job.unschedulable_reason
      ? "cannot run yet"
      : job.next_attempt_at
        ? `retry ${job.retries_used}/${job.max_retries}`
        : job.attempt_count > 1
          ? `attempt ${job.attempt_count}`
          : "";
    setText(statusNote, note);
    setTitle(statusNote, job.unschedulable_reason || job.reason || "");
    updateProgress(bar, job);
    setText(gpus, job.resources.gpus || "–");
    setText(resources, `${bytes(job.resources.memory_bytes)} · ${job.resources.cpus} CPU`);
    setText(agent, job.agent_id || "–");
    setText(created, age(job.created_at));
    setTitle(created, `submitted ${fullTime(job.created_at)}`);
    const ranFor = job.started_at ? between(job.started_at, job.finished_at) : null;
    setText(ran, ranFor === null ? "–" : duration(ranFor));
    const pairs = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`);
    if (pairs.join("\n") !== labelsShown) {
      labelsShown = pairs.join("\n");
      replace(labels, pairs.length ? labelChips(job.labels) : null);
    }
    row.haystack = [job.name, job.id, job.image, job.agent_id, job.status, ...pairs]
      .join("\n")
      .toLowerCase();
  };
  return row;
}
