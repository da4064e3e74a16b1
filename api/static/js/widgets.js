// Small pieces several views share: status badges, progress bars, times, polling.

import { h, setText, setTitle } from "./dom.js";
import { clock, duration, fullTime, percent } from "./format.js";

export function badge(status) {
  return h("span", { class: `badge status-${safeClass(status)}`, text: status || "–" });
}

export function updateBadge(el, status) {
  const cls = `badge status-${safeClass(status)}`;
  if (el.className !== cls) el.className = cls;
  setText(el, status || "–");
}

function safeClass(text) {
  return String(text || "unknown").replace(/[^a-z_-]/gi, "");
}

/** A bar (div in div, width set through CSSOM: allowed by the page's CSP) and its label. */
export function progressBar() {
  const fill = h("div", { class: "fill" });
  const label = h("span", { class: "bar-label" });
  const el = h("div", { class: "progress" }, h("div", { class: "bar" }, fill), label);
  return { el, fill, label };
}

export function updateProgress(bar, job) {
  const known = typeof job.progress === "number";
  bar.el.classList.toggle("unknown", !known);
  bar.el.classList.toggle("done", job.status === "succeeded");
  const fraction = known
    ? Math.max(0, Math.min(1, job.progress))
    : job.status === "succeeded"
      ? 1
      : 0;
  bar.fill.style.width = `${fraction * 100}%`;
  let text = known ? percent(job.progress) : "";
  if (typeof job.eta_seconds === "number") text += ` · ${duration(job.eta_seconds)} left`;
  setText(bar.label, text || (job.status === "succeeded" ? "done" : "–"));
}

export function timeEl(iso) {
  return h("time", { datetime: iso || "", title: fullTime(iso), text: clock(iso) });
}

export function updateTime(el, iso, text) {
  setText(el, text === undefined ? clock(iso) : text);
  setTitle(el, fullTime(iso));
}

/**
 * Call `task` now and then every `ms` after each call finishes (never two at once), until
 * stop(). `task` may return false to stop by itself. Errors go to `onError`. now() runs it at
 * once, or right after the call in flight (whose answer may predate what changed).
 */
export function poll(task, ms, onError = () => {}) {
  let stopped = false;
  let running = false;
  let rerun = false;
  let timer = null;
  async function tick() {
    timer = null;
    if (stopped) return;
    running = true;
    rerun = false;
    let again = true;
    try {
      if (!document.hidden) again = (await task()) !== false;
    } catch (error) {
      onError(error);
    }
    running = false;
    if (!stopped && (again || rerun)) timer = setTimeout(tick, rerun ? 0 : ms);
  }
  tick();
  return {
    now() {
      if (running) rerun = true;
      else if (!stopped) {
        clearTimeout(timer);
        tick();
      }
    },
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
    },
  };
}

/** A line of error text under a view's title, hidden while empty. */
export function errorLine() {
  const el = h("p", { class: "error", role: "alert", hidden: true });
  return {
    el,
    show(error) {
      const text = error ? error.message || String(error) : "";
      el.hidden = !text;
      setText(el, text);
    },
  };
}

/** A job's labels as small "key=value" chips. */
export function labelChips(labels) {
  return h(
    "span",
    { class: "labels" },
    Object.entries(labels || {}).map(([key, value]) =>
      h("span", { class: "label", text: `${key}=${value}` }),
    ),
  );
}
