// How numbers, sizes and times read for people.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 24202760192 -> "22.5 GiB"; 268435456 -> "256 MiB". */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || Math.abs(value) >= 100 ? 0 : 1;
  return `${trimZero(value.toFixed(digits))} ${UNITS[unit]}`;
}

function trimZero(text) {
  return text.includes(".") ? text.replace(/\.0+$/, "") : text;
}

/** Seconds as "45s", "3m 05s", "2h 07m", "3d 4h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function parseTime(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? ms : null;
}

/** Seconds between two ISO times (the second defaults to now). */
export function between(startIso, endIso) {
  const start = parseTime(startIso);
  if (start === null) return null;
  const end = endIso ? parseTime(endIso) : Date.now();
  return end === null ? null : (end - start) / 1000;
}

/** "12s ago" style age of an ISO time. */
export function age(iso) {
  const seconds = between(iso);
  return seconds === null ? "–" : duration(seconds);
}

/** Local time: "14:03:07" today, "Nov 24 14:03" otherwise. */
export function clock(iso) {
  const ms = parseTime(iso);
  if (ms === null) return "–";
  const date = new Date(ms);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  return date.toLocaleString([], {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** Full local date and time, for a tooltip. */
export function fullTime(iso) {
  const ms = parseTime(iso);
  return ms === null ? "" : new Date(ms).toLocaleString();
}

export function percent(fraction) {
  if (fraction === null || fraction === undefined) return "";
  return `${Math.floor(Math.max(0, Math.min(1, fraction)) * 100)}%`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

/** A metric value: 0.123456 -> "0.1235", 12345.6 -> "12346". */
export function metric(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toFixed(0);
  if (abs >= 1) return trimZero(value.toFixed(3));
  return Number(value.toPrecision(4)).toString();
}

export const FINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATUSES = ["queued", "starting", "running", "succeeded", "failed", "cancelled"];
