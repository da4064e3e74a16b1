// One job: status and actions, attempts timeline, the live log, metric charts, outputs, events.

import { api, apiUrl, ApiError, download, getToken, jobPath } from "../api.js";
import { MetricCharts } from "../charts.js";
import { h, replace, setText } from "../dom.js";
import {
  between,
  bytes,
  clock,
  duration,
  FINAL,
  fullTime,
  metric,
  parseTime,
  shortId,
} from "../format.js";
import { LogView } from "../logview.js";
import { navigate } from "../router.js";
import { followLog } from "../sse.js";
import {
  badge,
  errorLine,
  labelChips,
  poll,
  progressBar,
  timeEl,
  updateBadge,
  updateProgress,
} from "../widgets.js";

const REFRESH_MS = 2000;
const METRICS_MS = 2000;
const MAX_LOG_LINES = 100000; // the most GET /jobs/{id}/logs?tail= gives

export function jobView(main, jobId) {
  const error = errorLine();
  const title = h("h1", { class: "job-title" });
  const status = badge("");
  const cancelButton = h("button", {
    type: "button",
    class: "danger",
    text: "Cancel",
    onclick: cancel,
    dataset: { action: "cancel" },
  });
  const rerunButton = h("button", {
    type: "button",
    text: "Rerun",
    onclick: rerun,
    dataset: { action: "rerun" },
  });
  const deleteButton = h("button", {
    type: "button",
    class: "danger",
    text: "Delete",
    hidden: true,
    dataset: { action: "delete" },
    onclick: remove,
  });
  const summary = h("dl", { class: "facts" });
  const bar = progressBar();
  const latest = h("div", { class: "latest-metrics" });
  const attempts = h("div", { class: "attempts" });
  const outputs = h("div", { class: "outputs" });
  const events = h("tbody");
  const log = new LogView(
    fileLink(jobPath(jobId, "logs"), `${jobId}.log`, "Download log", error, {
      tail: MAX_LOG_LINES,
    }),
  );
  const charts = new MetricCharts(jobId);
  let job = null;
  let final = false;

  replace(
    main,
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-head" },
        h("a", { href: "#/", class: "back", text: "‹ Jobs" }),
        title,
        status,
        h("span", { class: "spacer" }),
        rerunButton,
        cancelButton,
        deleteButton,
      ),
      error.el,
      h("div", { class: "job-progress" }, bar.el, latest),
      summary,
    ),
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: "Attempts" })),
      attempts,
    ),
    log.element,
    charts.element,
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: "Outputs" })),
      outputs,
    ),
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: "Events" })),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "events" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Time", "Event", "Change", "By", "Message"].map((t) => h("th", { text: t })),
            ),
          ),
          events,
        ),
      ),
    ),
  );

  async function refresh() {
    const [fresh, trail] = await Promise.all([api(jobPath(jobId)), api(jobPath(jobId, "events"))]);
    error.show(null);
    job = fresh;
    drawJob(fresh);
    drawEvents(trail);
    if (FINAL.has(fresh.status) && !final) {
      final = true;
      drawOutputs();
      metricsPoller.now(); // the last points, then it stops
    }
    return !final;
  }

  function drawJob(j) {
    document.title = `${j.name || shortId(j.id)} · Trainyard`;
    setText(title, j.name || "(unnamed)");
    updateBadge(status, j.status);
    main.dataset.jobStatus = j.status;
    cancelButton.hidden = FINAL.has(j.status);
    deleteButton.hidden = !FINAL.has(j.status);
    cancelButton.disabled = FINAL.has(j.status) || Boolean(j.cancel_requested_at);
    setText(cancelButton, j.cancel_requested_at && !FINAL.has(j.status) ? "Cancelling…" : "Cancel");
    updateProgress(bar, j);
    replace(
      latest,
      Object.entries(j.latest_metrics || {}).map(([key, value]) =>
        h(
          "span",
          { class: "metric" },
          h("span", { class: "muted", text: `${key} ` }),
          metric(value),
        ),
      ),
    );
    const ran = j.started_at ? duration(between(j.started_at, j.finished_at)) : "–";
    const facts = [
      ["Id", h("span", { class: "mono", text: j.id })],
      ["Image", h("span", { class: "mono", text: j.image })],
      [
        "Command",
        j.command
          ? h("code", { class: "command", text: shellWords(j.command) })
          : "(the image's own)",
      ],
      [
        "Params",
        Object.keys(j.params || {}).length ? h("code", { text: JSON.stringify(j.params) }) : "–",
      ],
      ["Resources", resources(j.resources)],
      ["Limits", limits(j)],
      j.labels && Object.keys(j.labels).length && ["Labels", labelChips(j.labels)],
      j.workdir && ["Workdir", h("span", { class: "mono", title: j.workdir, text: j.workdir })],
      ["Submitted", timeEl(j.created_at)],
      ["Started", j.started_at ? timeEl(j.started_at) : "–"],
      ["Finished", j.finished_at ? timeEl(j.finished_at) : "–"],
      ["Ran", ran],
      ["Agent", j.agent_id ? h("span", { class: "mono", text: j.agent_id }) : "–"],
      ["Attempts", `${j.attempt_count} (retries used ${j.retries_used} of ${j.max_retries})`],
      [
        "Outcome",
        j.outcome
          ? `${j.outcome}${j.exit_code !== null ? ` · exit code ${j.exit_code}` : ""}`
          : "–",
      ],
      ["Reason", j.reason ? h("span", { class: "reason", text: j.reason }) : "–"],
      j.unschedulable_reason && [
        "Waiting",
        h("span", { class: "warn", text: j.unschedulable_reason }),
      ],
      j.next_attempt_at && ["Next try", timeEl(j.next_attempt_at)],
      j.cancel_requested_at && [
        "Cancelled by",
        `${j.cancel_requested_by || "?"} at ${clock(j.cancel_requested_at)}`,
      ],
    ].filter(Boolean);
    replace(
      summary,
      facts.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]),
    );
    drawAttempts(j);
  }

  function drawAttempts(j) {
    const list = j.attempts || [];
    if (!list.length) {
      replace(
        attempts,
        h("p", { class: "muted", text: "No attempt yet: the job waits for an agent." }),
      );
      return;
    }
    // One bar per attempt on a shared time axis, from the job's submission to now/its end.
    const start = parseTime(j.created_at);
    const end = parseTime(j.finished_at) || Date.now();
    const span = Math.max(1, end - start);
    const at = (iso) => ((parseTime(iso) ?? end) - start) / span;
    replace(
      attempts,
      list.map((a) => {
        const from = at(a.started_at || a.claimed_at);
        const to = at(a.finished_at);
        const fill = h("div", {
          class: `span outcome-${(a.outcome || "running").replace(/[^a-z_]/g, "")}`,
        });
        fill.style.left = `${(from * 100).toFixed(2)}%`;
        fill.style.width = `${Math.max(0.5, (to - from) * 100).toFixed(2)}%`;
        const took = a.started_at ? duration(between(a.started_at, a.finished_at)) : "not started";
        return h(
          "div",
          { class: "attempt", dataset: { attempt: a.number } },
          h(
            "div",
            { class: "attempt-head" },
            h("strong", { text: `#${a.number}` }),
            badge(a.outcome || (a.finished_at ? "unknown" : "running")),
            h("span", { class: "muted", text: `${clock(a.started_at || a.claimed_at)} · ${took}` }),
            h("span", { class: "mono small muted", text: a.agent_id }),
            a.gpu_ids.length
              ? h("span", { class: "small", text: `GPU ${a.gpu_ids.join(", ")}` })
              : null,
            a.exit_code !== null
              ? h("span", { class: "small", text: `exit ${a.exit_code}` })
              : null,
            a.oom_killed ? h("span", { class: "badge status-failed", text: "OOM-killed" }) : null,
          ),
          h(
            "div",
            {
              class: "timeline",
              title: `${fullTime(a.claimed_at)} → ${fullTime(a.finished_at) || "now"}`,
            },
            fill,
          ),
          a.reason ? h("pre", { class: "reason", text: a.reason }) : null,
        );
      }),
    );
  }

  function drawEvents(trail) {
    replace(
      events,
      trail.map((e) =>
        h(
          "tr",
          {},
          h("td", { class: "nowrap" }, timeEl(e.at)),
          h("td", { text: e.kind }),
          h("td", {
            class: "nowrap",
            text:
              e.from_status || e.to_status ? `${e.from_status || "–"} → ${e.to_status || "–"}` : "",
          }),
          h("td", { class: "mono small nowrap", text: e.actor }),
          h("td", { class: "reason", text: e.message }),
        ),
      ),
    );
  }

  async function drawOutputs() {
    try {
      const listing = await api(jobPath(jobId, "outputs"));
      const files = listing.files || [];
      if (!files.length) {
        replace(outputs, h("p", { class: "muted", text: "The job wrote no files to /outputs." }));
        return;
      }
      replace(
        outputs,
        h(
          "table",
          { class: "files" },
          h(
            "tbody",
            {},
            files.map((f) => {
              const path = f.path.split("/").map(encodeURIComponent).join("/");
              const name = f.path.split("/").pop();
              const link = fileLink(jobPath(jobId, "outputs", path), name, f.path, error);
              return h(
                "tr",
                {},
                h("td", { class: "mono" }, link),
                h("td", { class: "num", text: bytes(f.size) }),
                h("td", {}, timeEl(f.modified)),
              );
            }),
          ),
        ),
        listing.truncated
          ? h("p", { class: "muted", text: "The listing is cut at its bound." })
          : null,
      );
    } catch (e) {
      replace(outputs, h("p", { class: "muted", text: `Outputs unavailable: ${e.message}` }));
    }
  }

  async function cancel() {
    if (!job || !confirm(`Cancel job ${job.name || shortId(job.id)}?`)) return;
    cancelButton.disabled = true;
    try {
      drawJob(await api(jobPath(jobId, "cancel"), { method: "POST" }));
      poller.now();
    } catch (e) {
      error.show(e);
      cancelButton.disabled = false;
    }
  }

  async function remove() {
    if (!job) return;
    const label = job.name || shortId(job.id);
    if (!confirm(`Delete job ${label} with its log, outputs and metrics?`)) return;
    deleteButton.disabled = true;
    try {
      await api(jobPath(jobId), { method: "DELETE" });
      navigate("#/");
    } catch (e) {
      error.show(e);
      deleteButton.disabled = false;
    }
  }

  async function rerun() {
    rerunButton.disabled = true;
    try {
      const fresh = await api(jobPath(jobId, "rerun"), { method: "POST" });
      navigate(`#/jobs/${fresh.id}`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405) && job) {
        error.show(new Error("this service cannot rerun jobs yet (no POST /jobs/{id}/rerun)"));
      } else error.show(e);
    } finally {
      rerunButton.disabled = false;
    }
  }

  const poller = poll(refresh, REFRESH_MS, (e) => error.show(e));
  const metricsPoller = poll(
    async () => {
      const wasFinal = final; // one full fetch after the job ended picks up its last points
      await charts.poll();
      return !wasFinal;
    },
    METRICS_MS,
    () => {},
  );
  const stream = followLog(jobId, {
    tail: 2000,
    onLines: (lines) => log.push(lines),
    onGap: (text) => log.gap(text),
    onEnd: (finalStatus) => {
      log.setState(`ended: ${finalStatus}`);
      poller.now();
    },
    onState: (text) => log.setState(text),
  });
  drawOutputs();

  return {
    close() {
      poller.stop();
      metricsPoller.stop();
      stream.close();
      charts.close();
      document.title = "Trainyard";
    },
  };
}

/** A command as a shell would read it back: words with spaces or quotes in single quotes. */
function shellWords(words) {
  return words
    .map((word) => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`))
    .join(" ");
}

/**
 * A download link to an API file. Without a token the browser follows it itself (streamed);
 * with one, the page fetches it with the Authorization header and saves the blob.
 */
function fileLink(path, filename, text, error, query) {
  return h("a", {
    href: apiUrl(path, query).href,
    download: filename,
    text,
    onclick: (event) => {
      if (!getToken()) return;
      event.preventDefault();
      download(path, filename, query).catch((e) => error.show(e));
    },
  });
}

function resources(r) {
  const disk = r.disk_bytes ? ` · ${bytes(r.disk_bytes)} disk` : "";
  return `${bytes(r.memory_bytes)} memory · ${r.cpus} CPU · ${r.gpus} GPU${disk}`;
}

function limits(j) {
  const parts = [`timeout ${j.timeout_seconds ? duration(j.timeout_seconds) : "none"}`];
  if (j.stall_timeout_seconds) parts.push(`stalled after ${duration(j.stall_timeout_seconds)}`);
  if (j.stop_grace_seconds) parts.push(`stop grace ${duration(j.stop_grace_seconds)}`);
  parts.push(`priority ${j.priority}`);
  return parts.join(" · ");
}
