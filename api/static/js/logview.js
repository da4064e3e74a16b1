// A log view that keeps up with a chatty job: lines queue up and are added once per animation
// frame in one fragment, and only the last MAX_LINES stay in the DOM (older ones are dropped
// and counted), so a job printing thousands of lines a second costs a few DOM writes a frame.

import { h, setText } from "./dom.js";

export const MAX_LINES = 2000;
// "2026-11-25T04:03:03.900524194Z stdout {...}": time, stream padded to 6, the line.
const FRAME = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (stdout|stderr|agent ) (.*)$/s;

export class LogView {
  /** `actions`: nodes for the panel's head (a download link). */
  constructor(...actions) {
    this.pending = [];
    this.dropped = 0; // lines no longer in the DOM (or never put there)
    this.total = 0;
    this.scheduled = false;
    this.follow = true;
    this.lines = h("div", { class: "log-lines", role: "log", "aria-live": "off" });
    this.notice = h("div", { class: "log-notice", hidden: true });
    this.count = h("span", { class: "muted" });
    this.state = h("span", { class: "log-state muted" });
    const followBox = h("input", {
      type: "checkbox",
      checked: true,
      onchange: (event) => {
        this.follow = event.target.checked;
        if (this.follow) this.scrollToEnd();
      },
    });
    this.scroller = h("div", { class: "log", tabindex: "0" }, this.notice, this.lines);
    this.scroller.addEventListener("scroll", () => {
      // Scrolling up stops following; back at the bottom starts it again.
      const atEnd = this.isAtEnd();
      if (atEnd !== this.follow) {
        this.follow = atEnd;
        followBox.checked = atEnd;
      }
    });
    this.element = h(
      "section",
      { class: "panel log-panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h2", { text: "Log" }),
        this.state,
        h("span", { class: "spacer" }),
        this.count,
        actions,
        h("label", { class: "inline" }, followBox, " follow"),
      ),
      this.scroller,
    );
  }

  setState(text) {
    setText(this.state, text);
  }

  /** Queue lines; they reach the DOM at the next frame. */
  push(lines) {
    this.total += lines.length;
    for (const line of lines) this.pending.push(line);
    if (this.pending.length > MAX_LINES) {
      // Only the newest MAX_LINES can ever be shown: drop the rest before building any node.
      this.dropped += this.pending.length - MAX_LINES;
      this.pending.splice(0, this.pending.length - MAX_LINES);
    }
    this.schedule();
  }

  gap(text) {
    this.push([`— ${text} —`]);
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    // A hidden tab gets no animation frames; the timer keeps the queue bounded there too.
    const run = () => {
      if (!this.scheduled) return;
      this.scheduled = false;
      this.flush();
    };
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }

  flush() {
    if (!this.pending.length) return;
    const fragment = document.createDocumentFragment();
    for (const line of this.pending) fragment.append(renderLine(line));
    this.pending = [];
    this.lines.append(fragment);
    const excess = this.lines.childElementCount - MAX_LINES;
    for (let i = 0; i < excess; i += 1) this.lines.firstElementChild.remove();
    if (excess > 0) this.dropped += excess;
    if (this.dropped > 0) {
      this.notice.hidden = false;
      setText(
        this.notice,
        `${this.dropped.toLocaleString()} earlier lines are not shown here (the view keeps the ` +
          `last ${MAX_LINES.toLocaleString()}): download the log for all of it`,
      );
    }
    setText(this.count, `${this.total.toLocaleString()} lines read`);
    this.lines.dataset.count = String(this.lines.childElementCount);
    if (this.follow) this.scrollToEnd();
  }

  isAtEnd() {
    const el = this.scroller;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}

function renderLine(line) {
  const match = FRAME.exec(line);
  if (!match) return h("div", { class: "line", text: line });
  const [, at, stream, text] = match;
  const time = at.slice(11, 23); // HH:MM:SS.mmm (UTC, as the engine stamped it)
  return h(
    "div",
    { class: `line s-${stream.trim()}` },
    h("span", { class: "ts", title: at, text: time }),
    h("span", { class: "stream", text: stream.trim() }),
    h("span", { class: "text", text }),
  );
}
