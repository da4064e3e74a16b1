// Agents: hosts, heartbeats, engine, slots, memory and CPUs held, each GPU free or held by a job.

import { api } from "../api.js";
import { h, replace } from "../dom.js";
import { age, bytes, fullTime, shortId } from "../format.js";
import { errorLine, poll } from "../widgets.js";

const REFRESH_MS = 3000;
const JOB_ID = /^[0-9a-f]{32}$/;

export function agentsView(main) {
  const error = errorLine();
  const list = h("div", { class: "agents" });
  replace(
    main,
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h1", { text: "Agents" })),
      error.el,
      list,
    ),
  );

  async function refresh() {
    const agents = await api("agents");
    error.show(null);
    if (!agents.length) {
      replace(list, h("p", { class: "muted", text: "No agent has registered yet." }));
      return;
    }
    // Live agents first, then by id.
    agents.sort((a, b) => Number(b.alive) - Number(a.alive) || a.id.localeCompare(b.id));
    replace(list, agents.map(agentCard));
  }

  const poller = poll(refresh, REFRESH_MS, (e) => error.show(e));
  return { close: () => poller.stop() };
}

function agentCard(agent) {
  const state = agent.stopped_at ? "stopped" : agent.alive ? "alive" : "silent";
  const memory = agent.memory || {};
  const cpus = agent.cpus || {};
  const gpus = agent.gpus || { ids: [], free: [], held: {} };
  return h(
    "article",
    { class: `agent agent-${state}`, dataset: { agentId: agent.id } },
    h(
      "header",
      {},
      h("h2", { class: "mono", text: agent.id }),
      h("span", { class: `badge agent-${state}`, text: state }),
      h("span", { class: "spacer" }),
      h("span", {
        class: "muted",
        title: fullTime(agent.heartbeat_at),
        text: `heartbeat ${age(agent.heartbeat_at)} ago`,
      }),
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "Host" }),
      h("dd", { class: "mono", text: agent.hostname }),
      h("dt", { text: "Up since" }),
      h("dd", { title: fullTime(agent.started_at), text: `${age(agent.started_at)} ago` }),
      h("dt", { text: "Docker" }),
      h(
        "dd",
        { class: agent.engine && agent.engine.reachable ? "" : "warn" },
        agent.engine && agent.engine.reachable
          ? `engine ${agent.engine.version || "?"}`
          : `unreachable: ${(agent.engine && agent.engine.error) || agent.engine_error || "?"}`,
      ),
      h("dt", { text: "Jobs" }),
      h("dd", { text: `${agent.running} running of ${agent.slots} slots` }),
      h("dt", { text: "Memory" }),
      h("dd", {}, usage(memory.held_bytes, memory.total_bytes, bytes)),
      h("dt", { text: "CPUs" }),
      h(
        "dd",
        {},
        usage(
          cpus.held,
          cpus.total,
          (n) =>
            `${Number(n || 0)
              .toFixed(2)
              .replace(/\.?0+$/, "")}`,
        ),
      ),
      h("dt", { text: "GPUs" }),
      h("dd", {}, gpuChips(gpus)),
    ),
  );
}

function usage(heldOrNull, totalOrNull, format) {
  const held = Number(heldOrNull) || 0;
  const total = Number(totalOrNull) || 0;
  const fraction = total > 0 ? Math.min(1, held / total) : 0;
  const fill = h("div", { class: "fill" });
  fill.style.width = `${fraction * 100}%`;
  return h(
    "div",
    { class: "usage" },
    h("div", { class: "bar" }, fill),
    h("span", {
      text: `${format(held)} held of ${format(total)} · ${format(Math.max(0, total - held))} free`,
    }),
  );
}

function gpuChips(gpus) {
  const ids = gpus.ids || [];
  if (!ids.length) return h("span", { class: "muted", text: "none" });
  const held = gpus.held || {};
  return h(
    "div",
    { class: "gpus" },
    ids.map((id) => {
      const holder = held[id];
      if (holder === undefined) {
        return h(
          "span",
          { class: "gpu free", title: "free" },
          h("strong", { text: `GPU ${id}` }),
          " free",
        );
      }
      const who = JOB_ID.test(String(holder))
        ? h("a", { href: `#/jobs/${holder}`, class: "mono", text: shortId(holder) })
        : h("span", { text: String(holder) });
      return h(
        "span",
        { class: "gpu held", title: `held by ${holder}` },
        h("strong", { text: `GPU ${id}` }),
        " held by ",
        who,
      );
    }),
  );
}
