// The live generation leases, and what they still owe each GPU (for the VRAM bars).

import { DASH, duration, el, gib } from './format.js';

let leases = [];
let clockOffsetMs = 0; // server clock minus this browser's, from the latest stats timestamp

/** Follows the server's clock so "expires in" is right even when this browser's clock is not. */
export function syncClock(serverTimestamp) {
  const t = Date.parse(serverTimestamp);
  if (Number.isFinite(t)) clockOffsetMs = t - Date.now();
}

/** Each GPU a lease holds, with what it still owes there: a job on several GPUs (a gang)
 * lists them in `gpus`; a lease from a vramguard before gangs names only `gpu`. */
function gpusOf(l) {
  if (l.gpus && l.gpus.length) return l.gpus;
  return l.gpu ? [{ ...l.gpu, vram_outstanding_gb: l.vram_outstanding_gb }] : [];
}

/** GiB each GPU (by uuid) has promised to live leases and not yet seen used. */
export function owedByGpu() {
  const owed = new Map();
  for (const l of leases) {
    for (const g of gpusOf(l)) {
      owed.set(g.uuid, (owed.get(g.uuid) || 0) + (g.vram_outstanding_gb || 0));
    }
  }
  return owed;
}

function row(l, now) {
  const tr = el('tr');
  // The id is null for a lease this page's token neither owns nor administers.
  const client = el('td', '', l.client || l.owner || (l.id ? `${l.id.slice(0, 8)}…` : 'lease'));
  client.title = l.id ? `lease ${l.id}` : `lease of ${l.owner || 'another client'}`;
  const cells = [
    client,
    // A gang is one row: its GPUs in rank order.
    el('td', '', gpusOf(l).map((g) => `#${g.index}`).join(' ') || DASH),
    el('td', 'num', gib(l.vram_reserved_gb)),
    el('td', 'num', gib(l.vram_used_gb)),
    el('td', 'num', gib(l.vram_peak_gb)),
    el('td', 'num', gib(l.vram_outstanding_gb)),
    el('td', 'num expires', duration((Date.parse(l.expires_at) - now) / 1000)),
    el('td', l.overrun ? 'overrun' : '', l.overrun ? 'yes' : 'no'),
  ];
  cells[6].dataset.expiresAt = l.expires_at;
  tr.append(...cells);
  return tr;
}

/** Draws the answer of GET /generations. */
export function renderLeases(list) {
  leases = list.leases || [];
  const now = Date.now() + clockOffsetMs;
  const body = document.querySelector('#leases tbody');
  if (leases.length === 0) {
    const tr = el('tr', 'empty');
    const td = el('td', '', 'No live leases.');
    td.colSpan = 8;
    tr.append(td);
    body.replaceChildren(tr);
  } else {
    body.replaceChildren(...leases.map((l) => row(l, now)));
  }
  document.getElementById('lease-summary').textContent =
    `${list.active_generations} of ${list.max_concurrent_generations} slots in use`;
}

/** Counts the "expires in" cells down between two refreshes. */
export function tick() {
  const now = Date.now() + clockOffsetMs;
  for (const td of document.querySelectorAll('#leases td.expires')) {
    td.textContent = duration((Date.parse(td.dataset.expiresAt) - now) / 1000);
  }
}
