// The page's only way to the service: its public HTTP API, with the user's token if one is set.

const TOKEN_KEY = "trainyard.token";

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  const value = String(token || "").trim();
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** A URL of the API, relative to the page (works behind a proxy that adds a path prefix). */
export function apiUrl(path, query) {
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

export function jobPath(id, ...rest) {
  return ["jobs", encodeURIComponent(id), ...rest].join("/");
}

export class ApiError extends Error {
  constructor(status, body, fallback) {
    super(describe(status, body, fallback));
    this.status = status;
    this.body = body;
  }

  /** FastAPI's 422 items: [{loc: ["body", "resources", "memory"], msg, type}]. */
  get fieldErrors() {
    const detail = this.body && this.body.detail;
    return this.status === 422 && Array.isArray(detail) ? detail : [];
  }
}

function describe(status, body, fallback) {
  if (body && typeof body.message === "string") return body.message;
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  if (status === 0) return fallback || "the service did not answer";
  return fallback || `HTTP ${status}`;
}

const listeners = new Set();

/** Called with (error) whenever the API answers 401: the page then asks for a token. */
export function onUnauthorized(listener) {
  listeners.add(listener);
}

export function authHeaders(extra = {}, token = getToken()) {
  const headers = { ...extra };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/** fetch() an API path; JSON in and out. Throws ApiError on anything but 2xx. */
export async function api(path, { method = "GET", query, body, signal, headers } = {}) {
  const token = getToken();
  const init = {
    method,
    signal,
    headers: authHeaders({ Accept: "application/json", ...headers }, token),
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, null, `the service did not answer (${error.message})`);
  }
  return readResponse(response, token);
}

/**
 * The body of a response (JSON or text), or an ApiError. A 401 tells the listeners only when
 * it answers the token in use now: a reply to a request sent before the user saved a new one
 * must not reopen the prompt.
 */
export async function readResponse(response, token) {
  const type = response.headers.get("content-type") || "";
  let payload = null;
  if (response.status !== 204) {
    payload = type.includes("json")
      ? await response.json().catch(() => null)
      : await response.text();
  }
  if (!response.ok) {
    const error = new ApiError(
      response.status,
      typeof payload === "object" ? payload : null,
      typeof payload === "string" && payload ? payload.slice(0, 300) : undefined,
    );
    if (response.status === 401 && token === getToken()) {
      listeners.forEach((listener) => listener(error));
    }
    throw error;
  }
  return payload;
}

/** Fetch an API file with the token and hand it to the browser as a download. */
export async function download(path, filename, query) {
  const token = getToken();
  const response = await fetch(apiUrl(path, query), { headers: authHeaders({}, token) });
  if (!response.ok) await readResponse(response, token);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
