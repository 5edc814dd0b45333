// Every request goes to this page's own origin through a root-relative path: vramguard refuses
// cross-origin writes, and nothing the page does should leave the machine it came from.

const TOKEN_KEY = 'vramguard.token';

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return ''; // storage disabled: behave as if no token was given
  }
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A request vramguard refused (status 4xx/5xx) or could not answer (status 0). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Sends a request and returns the parsed JSON body (null when empty); throws ApiError with
 *  the API's `detail` sentence, which names the field, the value and what is allowed. */
export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, cache: 'no-store', credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `vramguard did not answer (${e.message})`);
  }
  const text = await res.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!res.ok) {
    const detail = json && typeof json.detail === 'string' ? json.detail : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, detail);
  }
  return json;
}

export function get(path, query) {
  const q = query ? new URLSearchParams(query).toString() : '';
  return call('GET', q ? `${path}?${q}` : path);
}

/** Subprotocols for the stats WebSocket: a browser cannot send an Authorization header there,
 *  so the token travels as `bearer.<token>`; the server answers `vramguard`. */
export function statsSocketProtocols() {
  const t = token();
  return t ? ['vramguard', `bearer.${t}`] : ['vramguard'];
}

/** The stats WebSocket of this same origin. */
export function statsSocketUrl() {
  const url = new URL('/api/v1/system/stats/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}
