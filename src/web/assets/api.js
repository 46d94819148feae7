// A thin client of limner's HTTP API: adds the bearer token kept in localStorage, parses JSON
// and turns error replies ({error, error_type, field}) into ApiError so pages can show the
// message next to the field it names.

const TOKEN_KEY = 'limner.token';

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const h = { ...extra };
  const t = getToken();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, errorType, message, field = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.errorType = errorType;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

/** Builds an ApiError from a failed response (reads its body). */
export async function errorFrom(res) {
  let data = null;
  try {
    data = await res.json();
  } catch {
    // Not JSON (a proxy's page, say): fall back to the status line.
  }
  const retry = Number.parseInt(res.headers.get('Retry-After') || '', 10);
  const err = new ApiError(
    res.status,
    data?.error_type || 'http_error',
    data?.error || `${res.status} ${res.statusText}`,
    data?.field || null,
    Number.isFinite(retry) ? retry : null,
  );
  if (res.status === 401) {
    window.dispatchEvent(new CustomEvent('limner:unauthorized', { detail: err }));
  }
  return err;
}

export async function request(method, path, body, { signal } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network_error', `Cannot reach the server (${e.message}).`);
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export const api = {
  get: (path, opts) => request('GET', path, undefined, opts),
  post: (path, body = {}, opts) => request('POST', path, body, opts),
  patch: (path, body, opts) => request('PATCH', path, body, opts),
  del: (path, opts) => request('DELETE', path, undefined, opts),
};

/** `/api/...` path segments are ids from the server or the URL: always encode them. */
export const enc = encodeURIComponent;

/** The API's message without a repeated "field: " prefix. */
export function messageOf(err) {
  const m = err?.message || String(err);
  if (err?.field && m.startsWith(`${err.field}: `)) return m.slice(err.field.length + 2);
  return m;
}

/** Creates an element: el('p', {class: 'x', text: 'hi'}, child...). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}
