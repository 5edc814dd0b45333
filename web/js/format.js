// Figures in the API's own units. A reading the API does not have (null) is shown as a dash,
// never as 0, so a missing sensor cannot pass for an idle one.

export const DASH = '—';

const has = (v) => typeof v === 'number' && Number.isFinite(v);

export const pct = (v) => (has(v) ? `${v.toFixed(1)} %` : DASH);
export const gib = (v) => (has(v) ? `${v.toFixed(2)} GiB` : DASH);
export const celsius = (v) => (has(v) ? `${Math.round(v)} °C` : DASH);
export const watts = (v) => (has(v) ? `${v.toFixed(1)} W` : DASH);
export const mibToGib = (v) => (has(v) ? v / 1024 : null);

/** "4 m 05 s" style duration; negative means already past. */
export function duration(seconds) {
  if (!has(seconds)) return DASH;
  if (seconds <= 0) return 'expiring';
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = String(s % 60).padStart(2, '0');
  if (h > 0) return `${h} h ${String(m).padStart(2, '0')} m`;
  if (m > 0) return `${m} m ${r} s`;
  return `${s % 60} s`;
}

/** Creates an element with a class and text; text is always set as text, never as HTML. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Replaces a list's items with one <li> per string. */
export function fillList(ul, items) {
  ul.replaceChildren(...(items || []).map((s) => el('li', '', s)));
}

export const gpuLabel = (g) => `${g.name || 'GPU'} #${g.index}`;
