// Trainyard dashboard: hash routes, the token prompt, and the views in js/views/.
// Everything shown comes from the public HTTP API; all of it is inserted as text.

import { getToken, onUnauthorized, setToken } from "./js/api.js";
import { h, replace, setText } from "./js/dom.js";
import { JOB_ID } from "./js/router.js";
import { agentsView } from "./js/views/agents.js";
import { jobView } from "./js/views/job.js";
import { jobsView } from "./js/views/jobs.js";
import { submitView } from "./js/views/submit.js";

const main = document.getElementById("view");
const banner = document.getElementById("banner");
const tokenButton = document.getElementById("token-button");
let current = null;

function route() {
  if (current) current.close();
  current = null;
  delete main.dataset.jobStatus;
  document.title = "Trainyard";
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean);
  let page = "jobs";
  if (parts.length === 0 || (parts[0] === "jobs" && parts.length === 1)) {
    current = jobsView(main);
  } else if (parts[0] === "submit" && parts.length === 1) {
    page = "submit";
    current = submitView(main);
  } else if (parts[0] === "jobs" && parts.length === 2 && JOB_ID.test(parts[1])) {
    current = jobView(main, parts[1]);
  } else if (parts[0] === "agents" && parts.length === 1) {
    page = "agents";
    current = agentsView(main);
  } else {
    page = "";
    replace(
      main,
      h(
        "section",
        { class: "panel" },
        h("h1", { text: "Not found" }),
        h("p", {}, "Nothing here. ", h("a", { href: "#/", text: "Back to the jobs" })),
      ),
    );
  }
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
}

// --- the token --------------------------------------------------------------------------------

const tokenInput = h("input", {
  type: "password",
  id: "token-input",
  autocomplete: "off",
  spellcheck: "false",
  placeholder: "paste the token",
});
const tokenNote = h("p", { class: "muted small" });
const dialog = h(
  "dialog",
  { id: "token-dialog" },
  h(
    "form",
    { method: "dialog", onsubmit: saveToken },
    h("h2", { text: "API token" }),
    tokenNote,
    h("label", { for: "token-input", text: "Token" }),
    tokenInput,
    h(
      "p",
      { class: "muted small" },
      "Kept in this browser's local storage and sent as Authorization: Bearer. An admin ",
      "creates one with ",
      h("code", { text: "python run.py token create --user NAME" }),
      ".",
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "token-save", text: "Save" }),
      h("button", { type: "button", id: "token-clear", text: "Forget token", onclick: clearToken }),
      h("button", { type: "button", text: "Close", onclick: () => dialog.close() }),
    ),
  ),
);
document.body.append(dialog);

function openTokenDialog(reason) {
  setText(tokenNote, reason || (getToken() ? "A token is set." : "No token is set."));
  if (dialog.open) return;
  tokenInput.value = "";
  dialog.showModal();
  tokenInput.focus();
}

function saveToken(event) {
  event.preventDefault();
  if (!tokenInput.value.trim()) {
    setText(tokenNote, "Paste a token first.");
    return;
  }
  setToken(tokenInput.value);
  dialog.close();
  showBanner(null);
  drawTokenButton();
  route();
}

function clearToken() {
  setToken("");
  dialog.close();
  drawTokenButton();
  route();
}

function drawTokenButton() {
  setText(tokenButton, getToken() ? "Token ✓" : "Token");
}

// Ask once per token value: every poll that gets a 401 must not reopen the prompt.
let askedFor = null;
onUnauthorized((error) => {
  const token = getToken();
  const message = token
    ? `The service refused the token: ${error.message}`
    : "This service needs an API token.";
  showBanner(message);
  if (askedFor !== token) {
    askedFor = token;
    openTokenDialog(message);
  }
});

function showBanner(message) {
  if (!message) {
    banner.hidden = true;
    return;
  }
  replace(
    banner,
    h("span", { text: message }),
    h("button", { type: "button", text: "Enter token", onclick: () => openTokenDialog(message) }),
  );
  banner.hidden = false;
}

tokenButton.addEventListener("click", () => openTokenDialog());
window.addEventListener("hashchange", route);
drawTokenButton();
route();
