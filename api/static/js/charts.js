// Training curves from GET /jobs/{id}/metrics, fetched incrementally (?since=cursor) and drawn
// with the vendored uPlot (a classic script that defines the global `uPlot`). Keys are grouped
// into a loss chart, an accuracy chart and one for the rest; counters (epoch, step, totals)
// are the x axis.

import { api, jobPath } from "./api.js";
import { h, replace, setText } from "./dom.js";

const COUNTERS = new Set([
  "epoch",
  "epochs",
  "total_epochs",
  "num_epochs",
  "step",
  "total_steps",
  "max_steps",
  "num_steps",
]);
const GROUPS = [
  { id: "loss", title: "Loss", test: (key) => /loss/i.test(key) },
  {
    id: "accuracy",
    title: "Accuracy",
    test: (key) => /acc|precision|recall|f1|auc|iou/i.test(key),
  },
  { id: "other", title: "Other metrics", test: () => true },
];
const COLORS = ["#2f6fde", "#e0702b", "#2a9d5c", "#b8436b", "#7a5bd1", "#998a19", "#1b9aaa"];
const MAX_LOCAL_POINTS = 5000; // per key; the service already thins long series
const HEIGHT = 220;
const INTEGER_INCREMENTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500]
  .flatMap((n) => [n, n * 1000, n * 1_000_000])
  .sort((a, b) => a - b);

export class MetricCharts {
  constructor(jobId) {
    this.jobId = jobId;
    this.cursor = null;
    this.series = new Map(); // key -> [{t, step, epoch, value}]
    this.plots = new Map(); // group id -> {plot, keys, mode, box}
    this.grid = h("div", { class: "charts" });
    this.empty = h("p", {
      class: "muted",
      text:
        "No metrics yet. A job gets curves by printing JSON lines such as " +
        '{"epoch": 1, "loss": 0.52, "accuracy": 0.81} on stdout.',
    });
    this.element = h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: "Metrics" })),
      this.empty,
      this.grid,
    );
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.grid);
  }

  /** Fetch the points added since the last call and redraw what changed. */
  async poll() {
    let more = true;
    let changed = false;
    while (more) {
      const page = await api(jobPath(this.jobId, "metrics"), {
        query: this.cursor === null ? {} : { since: this.cursor },
      });
      for (const [key, points] of Object.entries(page.series || {})) {
        if (!points.length) continue;
        const list = this.series.get(key) || [];
        for (const p of points) {
          list.push({ t: Date.parse(p.t) / 1000, step: p.step, epoch: p.epoch, value: p.value });
        }
        this.series.set(key, thin(list));
        changed = true;
      }
      this.cursor = page.cursor;
      more = page.more === true;
    }
    if (changed) this.draw();
  }

  draw() {
    const keys = [...this.series.keys()].filter((key) => !COUNTERS.has(key)).sort();
    this.empty.hidden = keys.length > 0;
    const grouped = new Map();
    for (const key of keys) {
      const group = GROUPS.find((g) => g.test(key));
      if (!grouped.has(group.id)) grouped.set(group.id, { group, keys: [] });
      grouped.get(group.id).keys.push(key);
    }
    for (const { group, keys: groupKeys } of grouped.values()) this.drawGroup(group, groupKeys);
    // Keep the charts in group order.
    for (const group of GROUPS) {
      const entry = this.plots.get(group.id);
      if (entry) this.grid.append(entry.box);
    }
  }

  drawGroup(group, keys) {
    const points = keys.flatMap((key) => this.series.get(key));
    const mode = points.every((p) => p.step !== null && p.step !== undefined)
      ? "step"
      : points.every((p) => p.epoch !== null && p.epoch !== undefined)
        ? "epoch"
        : "time";
    const data = align(
      keys.map((key) => this.series.get(key)),
      mode,
    );
    let entry = this.plots.get(group.id);
    if (entry && (entry.mode !== mode || entry.keys.join("\n") !== keys.join("\n"))) {
      entry.plot.destroy();
      entry.box.remove();
      this.plots.delete(group.id);
      entry = null;
    }
    if (!entry) {
      const target = h("div", { class: "chart-canvas" });
      const box = h(
        "figure",
        { class: "chart", dataset: { chart: group.id } },
        h("figcaption", { text: group.title }),
        target,
      );
      this.grid.append(box);
      const plot = new globalThis.uPlot(options(keys, mode, this.width()), data, target);
      entry = { plot, keys, mode, box };
      this.plots.set(group.id, entry);
    } else {
      entry.plot.setData(data);
    }
    const count = data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0);
    entry.box.dataset.points = String(count);
    const counted = `${count} point${count === 1 ? "" : "s"}`;
    setText(entry.box.querySelector("figcaption"), `${group.title} · ${counted} by ${mode}`);
  }

  width() {
    const columns = this.grid.clientWidth > 900 ? 2 : 1;
    return Math.max(280, Math.floor((this.grid.clientWidth - 16 * (columns - 1)) / columns) - 2);
  }

  fit() {
    const width = this.width();
    for (const { plot } of this.plots.values()) {
      if (Math.abs(plot.width - width) > 4) plot.setSize({ width, height: HEIGHT });
    }
  }

  close() {
    this.resize.disconnect();
    for (const { plot } of this.plots.values()) plot.destroy();
    this.plots.clear();
    replace(this.grid);
  }
}

function xOf(point, mode) {
  if (mode === "step") return point.step;
  if (mode === "epoch") return point.epoch;
  return point.t;
}

/** uPlot's columns: the sorted union of x values, then each key's value there (or null). */
function align(seriesList, mode) {
  const xs = new Set();
  const maps = seriesList.map((points) => {
    const byX = new Map();
    for (const p of points) {
      const x = xOf(p, mode);
      byX.set(x, p.value); // a retried attempt's later point at the same x wins
      xs.add(x);
    }
    return byX;
  });
  const xValues = [...xs].sort((a, b) => a - b);
  return [xValues, ...maps.map((byX) => xValues.map((x) => (byX.has(x) ? byX.get(x) : null)))];
}

function options(keys, mode, width) {
  return {
    width,
    height: HEIGHT,
    scales: { x: { time: mode === "time" } },
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    series: [
      { label: mode },
      ...keys.map((key, i) => ({
        label: key,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: true,
        points: { size: 5 },
      })),
    ],
    axes: [
      // Steps and epochs are counts: no tick at 1.5.
      mode === "time" ? { stroke: "#667" } : { stroke: "#667", incrs: INTEGER_INCREMENTS },
      { stroke: "#667", size: 60 },
    ],
  };
}

/** Keep a local series bounded: past the bound, every other point of the older half goes. */
function thin(list) {
  if (list.length <= MAX_LOCAL_POINTS) return list;
  const half = Math.floor(list.length / 2);
  return [...list.slice(0, half).filter((_, i) => i % 2 === 0), ...list.slice(half)];
}
