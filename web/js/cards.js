// The header's health badge and one card per GPU, updated in place on every sample.

import { DASH, celsius, el, fillList, gib, gpuLabel, mibToGib, pct, watts } from './format.js';

const cards = new Map(); // GPU uuid -> the card's live parts

export function renderHealth(health) {
  const badge = document.getElementById('health');
  badge.dataset.status = health.status;
  badge.textContent = `health: ${health.status}`;
  badge.title = health.message;
  const info = health.system_info || {};
  fillList(document.getElementById('health-issues'), info.issues);
  fillList(document.getElementById('health-warnings'), info.warnings);
  fillList(document.getElementById('health-recommendations'), info.recommendations);
  const any = ['issues', 'warnings', 'recommendations'].some((k) => (info[k] || []).length > 0);
  document.getElementById('health-detail').hidden = !any;
}

function reading(dl, label) {
  const pair = el('div');
  const dd = el('dd', '', DASH);
  pair.append(el('dt', '', label), dd);
  dl.append(pair);
  return dd;
}

function makeCard(gpu) {
  const root = el('article', 'gpu');
  root.dataset.uuid = gpu.uuid;
  const title = el('h3');
  const dl = el('dl', 'readings');
  const util = reading(dl, 'Utilization');
  const temp = reading(dl, 'Temperature');
  const power = reading(dl, 'Power');
  // Shown only where the board has them (fans) or they are in use (video engines).
  const fan = reading(dl, 'Fan');
  const codec = reading(dl, 'Encoder / decoder');
  const bar = el('div', 'bar');
  bar.setAttribute('role', 'img');
  const used = el('span', 'used');
  const owed = el('span', 'owed');
  const warn = el('span', 'mark warn');
  const crit = el('span', 'mark crit');
  bar.append(used, owed, warn, crit);
  const legend = el('div', 'vram-legend');
  root.append(title, dl, bar, legend);
  return { root, title, util, temp, power, fan, codec, bar, used, owed, warn, crit, legend };
}

function legendItem(swatch, text) {
  const span = el('span');
  span.append(el('span', `swatch ${swatch}`), text);
  return span;
}

function fillCard(c, gpu, owedGb, thresholds) {
  c.title.textContent = gpuLabel(gpu);
  c.util.textContent = pct(gpu.gpu_percent);
  c.temp.textContent = celsius(gpu.temperature_c);
  c.power.textContent = typeof gpu.power_limit_w === 'number'
    ? `${watts(gpu.power_w)} of ${watts(gpu.power_limit_w)}` : watts(gpu.power_w);
  c.fan.parentElement.hidden = typeof gpu.fan_percent !== 'number';
  c.fan.textContent = pct(gpu.fan_percent);
  const codecBusy = [gpu.encoder_percent, gpu.decoder_percent].some((v) => typeof v === 'number' && v > 0);
  c.codec.parentElement.hidden = !codecBusy;
  c.codec.textContent = `${pct(gpu.encoder_percent)} / ${pct(gpu.decoder_percent)}`;
  const total = mibToGib(gpu.vram_total_mb);
  const used = mibToGib(gpu.vram_used_mb);
  if (total === null || used === null || total <= 0) {
    c.bar.hidden = true;
    c.legend.replaceChildren(`VRAM ${DASH}`);
    return;
  }
  c.bar.hidden = false;
  const owed = Math.min(Math.max(owedGb, 0), Math.max(total - used, 0));
  const free = Math.max(total - used - owed, 0);
  c.used.style.width = `${(used / total) * 100}%`;
  c.owed.style.width = `${(owed / total) * 100}%`;
  for (const [mark, value, name] of [[c.warn, thresholds?.vram_warning_threshold, 'warning'],
    [c.crit, thresholds?.vram_critical_threshold, 'critical']]) {
    mark.hidden = typeof value !== 'number';
    if (!mark.hidden) {
      mark.style.left = `calc(${value * 100}% - 1px)`;
      mark.title = `${name} threshold ${Math.round(value * 100)} %`;
    }
  }
  c.bar.setAttribute('aria-label',
    `VRAM used ${gib(used)}, outstanding ${gib(owed)}, free ${gib(free)} of ${gib(total)}`);
  const parts = [
    legendItem('used', `used ${gib(used)} (${pct(gpu.vram_percent)})`), ' · ',
    legendItem('owed', `outstanding ${gib(owed)}`), ' · ',
    legendItem('free', `free ${gib(free)}`), ` of ${gib(total)}`,
  ];
  if (thresholds) {
    parts.push(' · ', legendItem('warn', `warning ${Math.round(thresholds.vram_warning_threshold * 100)} %`),
      ' ', legendItem('crit', `critical ${Math.round(thresholds.vram_critical_threshold * 100)} %`));
  }
  c.legend.replaceChildren(...parts);
}

/** Draws every GPU of a stats message. `owed` maps GPU uuid to the GiB live leases were
 *  promised and have not used yet; `thresholds` are the live constraints (or null). */
export function renderGpus(stats, owed, thresholds) {
  const section = document.getElementById('gpus');
  const seen = new Set();
  for (const gpu of stats.gpus || []) {
    seen.add(gpu.uuid);
    let c = cards.get(gpu.uuid);
    if (!c) {
      c = makeCard(gpu);
      cards.set(gpu.uuid, c);
      section.append(c.root);
    }
    fillCard(c, gpu, owed.get(gpu.uuid) || 0, thresholds);
  }
  for (const [uuid, c] of cards) {
    if (!seen.has(uuid)) {
      c.root.remove();
      cards.delete(uuid);
    }
  }
  document.getElementById('no-gpu').hidden = seen.size > 0;
}

/** Dims the cards while the live stream is down, so old figures are not read as current. */
export function markStale(stale) {
  for (const c of cards.values()) c.root.classList.toggle('stale', stale);
}
