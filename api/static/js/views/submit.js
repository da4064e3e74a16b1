// The submit form. The service is the validator: its 422 items name the field they are about
// (loc ["body", "resources", "memory"]) and each message is shown next to that field.
// The page itself checks only what it must parse before sending (the JSON fields).

import { api, ApiError } from "../api.js";
import { h, replace, setText } from "../dom.js";
import { navigate } from "../router.js";

const BASIC = [
  // [field path, label, kind, placeholder, help]
  ["name", "Name", "text", "resnet50-baseline", "For people; need not be unique."],
  ["image", "Image", "text", "trainyard/train:latest", "Docker image; empty for the default."],
  [
    "command",
    "Command",
    "textarea",
    '["python3", "train.py", "--epochs", "3"]',
    "A JSON array of strings, or one argument per line. Empty: the image's own command.",
  ],
  [
    "params",
    "Params (JSON)",
    "textarea",
    '{"epochs": 3, "batch_size": 16}',
    "Handed to the job as JSON in TRAINYARD_PARAMS.",
  ],
  ["env", "Environment", "textarea", "WANDB_MODE=offline", "One NAME=value per line."],
  ["labels", "Labels", "textarea", "team=vision", "One key=value per line, to find jobs by."],
];
const RESOURCES = [
  ["resources.memory", "Memory", "text", "default", "Like Docker's --memory: 512m, 4g."],
  ["resources.cpus", "CPUs", "text", "default", "Cores, e.g. 1.5."],
  ["resources.gpus", "GPUs", "text", "0", "Whole GPUs."],
  ["resources.disk", "Disk", "text", "default", "Budget for its files: 10g."],
];
const LIMITS = [
  ["timeout_seconds", "Timeout (s)", "text", "default", "Stop the job after this long."],
  ["stall_timeout_seconds", "Stall timeout (s)", "text", "none", "Stop it when silent this long."],
  ["stop_grace_seconds", "Stop grace (s)", "text", "default", "SIGTERM, then SIGKILL after."],
  ["max_retries", "Max retries", "text", "default", "Retries of a failure worth retrying."],
  ["priority", "Priority", "text", "0", "Higher runs first (-1000 to 1000)."],
];
const FIELDS = [...BASIC, ...RESOURCES, ...LIMITS];
const NUMBERS = new Set([
  "resources.cpus",
  "resources.gpus",
  "timeout_seconds",
  "stall_timeout_seconds",
  "stop_grace_seconds",
  "max_retries",
  "priority",
]);
const KEY_VALUES = { env: "NAME=value", labels: "key=value" };

export function submitView(main) {
  const inputs = new Map(); // field path -> input
  const errors = new Map(); // field path -> error element
  const formError = h("div", {
    class: "error",
    role: "alert",
    hidden: true,
    dataset: { field: "body" },
  });
  const submitButton = h("button", { type: "submit", class: "primary", text: "Submit job" });

  const row = (path, label, kind, placeholder, help) => {
    const id = `f-${path.replace(".", "-")}`;
    const input =
      kind === "textarea"
        ? h("textarea", {
            id,
            name: path,
            rows: path === "command" ? 4 : 3,
            placeholder,
            spellcheck: "false",
          })
        : h("input", {
            id,
            name: path,
            type: "text",
            placeholder,
            autocomplete: "off",
            spellcheck: "false",
          });
    const error = h("div", {
      class: "field-error",
      role: "alert",
      hidden: true,
      dataset: { errorFor: path },
    });
    input.setAttribute("aria-describedby", `${id}-help`);
    inputs.set(path, input);
    errors.set(path, error);
    return h(
      "div",
      { class: `field field-${path.replace(".", "-")}` },
      h("label", { for: id, text: label }),
      input,
      h("div", { class: "help muted small", id: `${id}-help`, text: help }),
      error,
    );
  };

  const form = h(
    "form",
    { class: "submit-form", novalidate: true, onsubmit: (event) => submit(event) },
    formError,
    BASIC.map((f) => row(...f)),
    h(
      "fieldset",
      { class: "grid-fields" },
      h("legend", { text: "Resources" }),
      RESOURCES.map((f) => row(...f)),
    ),
    h(
      "fieldset",
      { class: "grid-fields" },
      h("legend", { text: "Limits, retries and order" }),
      LIMITS.map((f) => row(...f)),
    ),
    h(
      "div",
      { class: "actions" },
      submitButton,
      h("a", { href: "#/", class: "button", text: "Cancel" }),
    ),
  );
  replace(
    main,
    h(
      "section",
      { class: "panel narrow" },
      h("div", { class: "panel-head" }, h("h1", { text: "New job" })),
      form,
    ),
  );
  inputs.get("name").focus();

  function clearErrors() {
    formError.hidden = true;
    for (const [path, el] of errors) {
      el.hidden = true;
      el.replaceChildren();
      inputs.get(path).removeAttribute("aria-invalid");
    }
  }

  function showError(path, message) {
    const el = errors.get(path);
    if (!el) {
      formError.hidden = false;
      formError.append(h("div", { text: path === "body" ? message : `${path}: ${message}` }));
      return;
    }
    el.hidden = false;
    el.append(h("div", { text: message }));
    inputs.get(path).setAttribute("aria-invalid", "true");
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    formError.replaceChildren();
    const { spec, problems } = readForm(inputs);
    if (problems.length) {
      problems.forEach(([path, message]) => showError(path, message));
      focusFirstError();
      return;
    }
    submitButton.disabled = true;
    setText(submitButton, "Submitting…");
    try {
      const job = await api("jobs", { method: "POST", body: spec });
      navigate(`#/jobs/${job.id}`);
    } catch (error) {
      if (error instanceof ApiError && error.fieldErrors.length) {
        for (const item of error.fieldErrors)
          showError(fieldOf(item.loc, errors), String(item.msg));
      } else {
        showError("body", error.message || String(error));
      }
      focusFirstError();
    } finally {
      submitButton.disabled = false;
      setText(submitButton, "Submit job");
    }
  }

  function focusFirstError() {
    const first = [...inputs.values()].find((input) => input.getAttribute("aria-invalid"));
    (first || formError).scrollIntoView({ block: "center" });
    if (first) first.focus();
  }

  return { close() {} };
}

/** The form field a 422 item is about: the longest prefix of its loc that is a field. */
function fieldOf(loc, errors) {
  const path = (Array.isArray(loc) ? loc : []).map(String);
  const parts = path[0] === "body" ? path.slice(1) : path;
  for (let n = parts.length; n > 0; n -= 1) {
    const candidate = parts.slice(0, n).join(".");
    if (errors.has(candidate)) return candidate;
  }
  return "body";
}

function readForm(inputs) {
  const spec = {};
  const problems = [];
  const value = (path) => inputs.get(path).value;
  const put = (path, v) => {
    const [head, tail] = path.split(".");
    if (tail) spec[head] = { ...(spec[head] || {}), [tail]: v };
    else spec[head] = v;
  };
  for (const [path] of FIELDS) {
    const raw = value(path);
    if (!raw.trim()) continue;
    if (path === "command") {
      const command = parseCommand(raw);
      if (typeof command === "string") problems.push([path, command]);
      else put(path, command);
    } else if (path === "params") {
      try {
        const params = JSON.parse(raw);
        if (params === null || typeof params !== "object" || Array.isArray(params)) {
          problems.push([path, 'params must be a JSON object, e.g. {"epochs": 3}']);
        } else put(path, params);
      } catch (error) {
        problems.push([path, `not valid JSON: ${error.message}`]);
      }
    } else if (path in KEY_VALUES) {
      const pairs = parsePairs(raw, KEY_VALUES[path]);
      if (typeof pairs === "string") problems.push([path, pairs]);
      else put(path, pairs);
    } else if (NUMBERS.has(path)) {
      // Not a number: sent as typed, so the service's message says what it accepts.
      const trimmed = raw.trim();
      const number = Number(trimmed);
      put(path, trimmed !== "" && Number.isFinite(number) ? number : trimmed);
    } else {
      put(path, raw.trim());
    }
  }
  return { spec, problems };
}

function parseCommand(raw) {
  const text = raw.trim();
  if (text.startsWith("[")) {
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      return `not a valid JSON array: ${error.message}`;
    }
    if (!Array.isArray(parsed) || !parsed.every((part) => typeof part === "string")) {
      return 'the command must be a JSON array of strings, e.g. ["python3", "train.py"]';
    }
    return parsed;
  }
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

/** "A=1\nB=2" -> {A: "1", B: "2"}; a message for a line without a name and "=". */
function parsePairs(raw, shape) {
  const pairs = {};
  const lines = raw
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  for (const [i, line] of lines.entries()) {
    const eq = line.indexOf("=");
    if (eq <= 0) return `line ${i + 1}: write ${shape}`;
    pairs[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return pairs;
}
