// Following a job's log as Server-Sent Events with fetch() and a stream reader: EventSource
// cannot send the Authorization header. Each event id is a position in the log; after a
// dropped connection the reader sends it back as Last-Event-ID and continues where it stopped.

import { apiUrl, authHeaders, getToken, jobPath, readResponse } from "./api.js";

const RETRY_MS = [500, 1000, 2000, 5000];

/**
 * Follow the log of `jobId` until its `end` event or close().
 *   onLines(lines)   new log lines, in order, several at a time
 *   onGap(text)      older lines were rotated out before they could be read
 *   onEnd(status)    the job is final; the stream is over
 *   onState(text)    "live", "reconnecting…", or an error to show
 */
export function followLog(jobId, { tail = 1000, onLines, onGap, onEnd, onState }) {
  const controller = new AbortController();
  let lastId = null;
  let closed = false;

  async function run() {
    let failures = 0;
    while (!closed) {
      const token = getToken();
      const headers = authHeaders({ Accept: "text/event-stream" }, token);
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      try {
        const response = await fetch(apiUrl(jobPath(jobId, "logs"), { follow: "true", tail }), {
          headers,
          signal: controller.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          // 401/404 and other refusals are final; a full follower table (503) or an agent
          // that cannot be reached is worth waiting for.
          if (response.status < 500) {
            await readResponse(response, token);
          }
          throw new Error(`HTTP ${response.status}`);
        }
        onState("live");
        failures = 0;
        if (await readEvents(response.body)) return;
      } catch (error) {
        if (closed || error.name === "AbortError") return;
        if (error.status && error.status < 500) {
          onState(`log unavailable: ${error.message}`);
          return;
        }
      }
      if (closed) return;
      onState("reconnecting…");
      await sleep(RETRY_MS[Math.min(failures, RETRY_MS.length - 1)]);
      failures += 1;
    }
  }

  /** Read one response's events; true once the `end` event came. */
  async function readEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      const batch = [];
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (event.id !== null) lastId = event.id;
          if (event.type === "end") {
            flush(batch);
            onEnd(event.data.join("\n"));
            closed = true;
            reader.cancel().catch(() => {});
            return true;
          }
          if (event.type === "gap") {
            flush(batch);
            onGap(event.data.join("\n"));
          } else if (event.data.length) {
            batch.push(event.data.join("\n"));
          }
          event = { type: "", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") event.data.push(text);
        else if (field === "event") event.type = text;
        else if (field === "id" && !text.includes("\0")) event.id = text;
      }
      flush(batch);
    }
  }

  function flush(batch) {
    if (batch.length) onLines(batch.splice(0));
  }

  run();
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
