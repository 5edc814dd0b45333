// vramguard's live page: wires the parts in web/js/ to the API of the origin that served it.
//
// Samples arrive over the stats WebSocket (one message per sample); health and leases are
// polled; history is fetched for the chosen range. No framework, no build step.

import { get, statsSocketProtocols, statsSocketUrl } from './js/api.js';
import { markStale, renderGpus, renderHealth } from './js/cards.js';
import { addSample, backfill, setRange, setThresholds, watchLayout } from './js/charts.js';
import { setupEditors, setupToken, setupWhatIf } from './js/forms.js';
import { owedByGpu, renderLeases, syncClock, tick } from './js/leases.js';

const POLL_MS = 2000;
const MAX_BACKOFF_MS = 10000;

let latest = null; // the newest stats message
let thresholds = null; // the live constraints

function draw() {
  if (latest) renderGpus(latest, owedByGpu(), thresholds);
}

function useConstraints(constraints) {
  if (!constraints) return;
  thresholds = constraints;
  setThresholds(constraints);
  draw();
}

function connection(state, text) {
  const badge = document.getElementById('conn');
  badge.dataset.state = state;
  badge.textContent = text;
}

async function poll() {
  const [health, list] = await Promise.allSettled([
    get('/api/v1/system/health'),
    get('/api/v1/system/generations'),
  ]);
  if (health.status === 'fulfilled') {
    renderHealth(health.value);
    // Health carries the constraints in force, so changes made elsewhere reach the charts too.
    useConstraints(health.value.system_info?.resource_constraints);
  }
  const leasesError = document.getElementById('leases-error');
  if (list.status === 'fulfilled') {
    renderLeases(list.value);
    leasesError.textContent = '';
    draw();
  } else {
    leasesError.textContent = `Leases unavailable: ${list.reason.message}`;
  }
  setTimeout(poll, POLL_MS);
}

/** Follows the stats stream; after a drop (e.g. a restart) retries with exponential backoff
 *  and, once back, reloads the history so the gap is filled from the server's record. */
function connect(attempt) {
  const ws = new WebSocket(statsSocketUrl(), statsSocketProtocols());
  ws.addEventListener('open', () => {
    connection('live', 'live');
    markStale(false);
    if (attempt > 0) backfill();
    attempt = 0;
  });
  ws.addEventListener('message', (event) => {
    let stats;
    try {
      stats = JSON.parse(event.data);
    } catch {
      return;
    }
    latest = stats;
    syncClock(stats.timestamp);
    draw();
    addSample(stats);
  });
  ws.addEventListener('close', () => {
    markStale(true);
    const next = attempt + 1;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** (next - 1)) * (0.75 + Math.random() * 0.5);
    connection('reconnecting', `reconnecting in ${Math.ceil(delay / 1000)} s`);
    setTimeout(() => connect(next), delay);
  });
}

function setupRanges() {
  const group = document.getElementById('ranges');
  group.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-hours]');
    if (!button) return;
    for (const b of group.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === button));
    setRange(Number(button.dataset.hours));
  });
}

async function header() {
  document.getElementById('host').textContent = location.host;
  document.title = `vramguard · ${location.host}`;
  try {
    const doc = await get('/api/v1/openapi.json');
    document.getElementById('version').textContent = doc.info?.version || '';
  } catch {
    // The version is decoration; the rest of the page does not depend on it.
  }
}

header();
setupToken();
setupWhatIf();
setupEditors(useConstraints)();
setupRanges();
watchLayout();
backfill();
connect(0);
poll();
setInterval(tick, 1000);
