// Time-series charts (uPlot): backfilled from stats/history for the chosen range, then extended
// with the live samples of the WebSocket.
//
// History points carry the whole (mean utilization, VRAM over all GPUs) and each GPU's own
// figures by index (`gpus`), so with several GPUs every line, the whole and each GPU's, starts in
// the history. A GPU the history has no figures for (points recorded by an older vramguard) is
// labelled "(live)": its line starts when the page was opened.

import { get } from './api.js';
import { gpuLabel } from './format.js';

const MAX_POINTS = 720; // about one point per two pixels of a wide chart
const HEIGHT = 190;

const state = {
  hours: 0.25,
  x: [],
  cpu: [],
  ram: [],
  gpu: [], // mean utilization of all GPUs
  vram: [], // VRAM of all GPUs
  gpus: [], // [{uuid, index, label, util: [], vram: []}] in index order
  historyPoints: 0, // the first historyPoints entries of x came from the history
  historyGpus: new Map(), // index -> {util: [], vram: []}, one entry per history point
  historyHours: undefined, // the range of the last history answer
  thresholds: null,
  charts: {},
};

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const palette = () => [1, 2, 3, 4, 5, 6].map((i) => css(`--series-${i}`));

/** Dashed horizontal lines at live thresholds (fractions, drawn as percent). */
function thresholdLines(lines) {
  const draw = (u) => {
    const dpr = devicePixelRatio || 1;
    const { ctx } = u;
    const drawn = new Map(); // value -> labels, so equal thresholds share one line
    for (const { key, label, color } of lines) {
      const value = state.thresholds?.[key];
      if (typeof value !== 'number') continue;
      const same = drawn.get(value);
      if (same) {
        same.labels.push(label);
      } else {
        drawn.set(value, { labels: [label], color });
      }
    }
    for (const [value, { labels, color }] of drawn) {
      const y = Math.round(u.valToPos(value * 100, 'y', true));
      const right = u.bbox.left + u.bbox.width;
      ctx.save();
      ctx.strokeStyle = css(color);
      ctx.lineWidth = dpr;
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.font = `${11 * dpr}px system-ui, sans-serif`;
      ctx.textAlign = 'right';
      const text = `${labels.join(', ')} ${Math.round(value * 100)} %`;
      const width = ctx.measureText(text).width;
      // The label interrupts its line on an opaque backing, so neither the line nor a series
      // runs through the text.
      ctx.fillStyle = css('--panel');
      ctx.fillRect(right - 8 * dpr - width, y - 14 * dpr, width + 8 * dpr, 16 * dpr);
      ctx.fillStyle = css(color);
      ctx.fillText(text, right - 4 * dpr, y - 3 * dpr);
      ctx.restore();
    }
  };
  return { hooks: { draw: [draw] } };
}

function options(width, seriesDefs, lines) {
  const fg = css('--fg');
  const grid = { stroke: css('--line'), width: 1 };
  const colors = palette();
  return {
    width,
    height: HEIGHT,
    scales: { x: { time: true }, y: { range: [0, 100] } },
    axes: [
      { stroke: fg, grid, ticks: grid },
      { stroke: fg, grid, ticks: grid, size: 40, values: (u, vals) => vals.map((v) => `${v}`) },
    ],
    series: [{}, ...seriesDefs.map((s, i) => ({
      label: s.label,
      stroke: colors[i % colors.length],
      width: 1.5,
      points: { fill: css('--panel') },
      value: (u, v) => (v == null ? '—' : `${v.toFixed(1)} %`),
    }))],
    plugins: [thresholdLines(lines)],
  };
}

/** What each chart shows, given the GPUs now known. */
function layout() {
  const one = state.gpus.length === 1;
  const whole = (label, data) => ({ label, data });
  const each = (field) => state.gpus.map((g) => ({
    label: state.historyPoints > 0 && !state.historyGpus.has(g.index) ? `${g.label} (live)` : g.label,
    data: g[field],
  }));
  return {
    host: {
      series: [whole('CPU', state.cpu), whole('RAM', state.ram)],
      lines: [{ key: 'cpu_warning_threshold', label: 'CPU warning', color: '--warn' },
        { key: 'ram_warning_threshold', label: 'RAM warning', color: '--warn' }],
    },
    util: {
      series: one ? [whole(state.gpus[0].label, state.gpu)]
        : [whole('all GPUs (mean)', state.gpu), ...each('util')],
      lines: [],
    },
    vram: {
      series: one ? [whole(state.gpus[0].label, state.vram)]
        : [whole('all GPUs', state.vram), ...each('vram')],
      lines: [{ key: 'vram_warning_threshold', label: 'warning', color: '--warn' },
        { key: 'vram_critical_threshold', label: 'critical', color: '--crit' }],
    },
  };
}

const containers = () => ({
  host: document.getElementById('chart-host'),
  util: document.getElementById('chart-util'),
  vram: document.getElementById('chart-vram'),
});

/** (Re)creates the charts: needed when the GPU set or the colour scheme changes. */
export function rebuild() {
  if (typeof uPlot === 'undefined') return; // the deferred library has not run yet
  const boxes = containers();
  const plan = layout();
  const noGpu = state.gpus.length === 0;
  for (const [name, box] of Object.entries(boxes)) {
    state.charts[name]?.destroy();
    delete state.charts[name];
    const hidden = name !== 'host' && noGpu;
    box.closest('figure').hidden = hidden;
    if (hidden) continue;
    const { series, lines } = plan[name];
    const data = [state.x, ...series.map((s) => s.data)];
    state.charts[name] = new uPlot(options(box.clientWidth || 300, series, lines), data, box);
  }
  mark();
}

function redraw() {
  const plan = layout();
  for (const [name, chart] of Object.entries(state.charts)) {
    chart.setData([state.x, ...plan[name].series.map((s) => s.data)]);
  }
  mark();
}

const filled = (arr) => arr.reduce((n, v) => n + (v == null ? 0 : 1), 0);

/** Exposes how many points the charts hold, for people using tools and for the browser test:
 *  all points, those from the history, and on the GPU charts the fewest readings any GPU's own
 *  line holds, in all and from the history. */
function mark() {
  const boxes = containers();
  for (const box of Object.values(boxes)) {
    box.dataset.points = String(state.x.length);
    box.dataset.historyPoints = String(state.historyPoints);
    if (state.historyHours !== undefined) box.dataset.historyHours = String(state.historyHours);
  }
  for (const [name, field] of [['util', 'util'], ['vram', 'vram']]) {
    const fewest = (count) => (state.gpus.length ? Math.min(...state.gpus.map(count)) : 0);
    boxes[name].dataset.gpuPoints = String(fewest((g) => filled(g[field])));
    boxes[name].dataset.gpuHistoryPoints = String(fewest((g) => filled(g[field].slice(0, state.historyPoints))));
  }
}

/** A GPU's history for `field`, then nulls for the live points that followed. */
function gpuSeries(index, field) {
  const past = state.historyGpus.get(index)?.[field] ?? new Array(state.historyPoints).fill(null);
  return [...past, ...new Array(state.x.length - state.historyPoints).fill(null)];
}

/** Adopts the GPU set of a stats message; returns whether it changed. */
function adoptGpus(gpus) {
  const key = gpus.map((g) => `${g.uuid}=${gpuLabel(g)}`).join('|');
  if (key === state.gpus.map((g) => `${g.uuid}=${g.label}`).join('|')) return false;
  const old = new Map(state.gpus.map((g) => [g.uuid, g]));
  state.gpus = gpus.map((g) => {
    const known = old.get(g.uuid);
    if (known) return { ...known, index: g.index, label: gpuLabel(g) };
    return { uuid: g.uuid, index: g.index, label: gpuLabel(g), util: gpuSeries(g.index, 'util'), vram: gpuSeries(g.index, 'vram') };
  });
  return true;
}

function trim(now) {
  const start = now - state.hours * 3600;
  let n = 0;
  while (n < state.x.length && state.x[n] < start) n += 1;
  if (n === 0) return;
  for (const arr of [state.x, state.cpu, state.ram, state.gpu, state.vram, ...state.gpus.flatMap((g) => [g.util, g.vram])]) {
    arr.splice(0, n);
  }
  for (const h of state.historyGpus.values()) {
    h.util.splice(0, n);
    h.vram.splice(0, n);
  }
  state.historyPoints = Math.max(0, state.historyPoints - n);
}

/** Extends the charts with a live sample, at most one point per 1/MAX_POINTS of the range. */
export function addSample(stats) {
  const changed = adoptGpus(stats.gpus || []);
  const x = Date.parse(stats.timestamp) / 1000;
  const last = state.x[state.x.length - 1];
  const due = last === undefined || x - last >= (state.hours * 3600) / MAX_POINTS;
  if (due) {
    const one = state.gpus.length === 1 ? stats.gpus[0] : null;
    state.x.push(x);
    state.cpu.push(stats.cpu_percent ?? null);
    state.ram.push(stats.ram_percent ?? null);
    // With one GPU its own reading is exact and null when missing; the whole is the API's mean.
    state.gpu.push(one ? one.gpu_percent ?? null : stats.gpu_percent);
    state.vram.push(one ? one.vram_percent ?? null : stats.vram_percent);
    const byUuid = new Map((stats.gpus || []).map((g) => [g.uuid, g]));
    for (const g of state.gpus) {
      g.util.push(byUuid.get(g.uuid)?.gpu_percent ?? null);
      g.vram.push(byUuid.get(g.uuid)?.vram_percent ?? null);
    }
    trim(x);
  }
  if (changed || Object.keys(state.charts).length === 0) rebuild();
  else if (due) redraw();
}

/** Loads the chosen range from stats/history, replacing what the charts hold. */
export async function backfill() {
  const note = document.getElementById('history-note');
  let answer;
  try {
    answer = await get('/api/v1/system/stats/history', { hours: state.hours, max_points: MAX_POINTS });
  } catch (e) {
    note.textContent = `History unavailable: ${e.message}`;
    note.classList.add('error');
    return;
  }
  note.classList.remove('error');
  const points = answer.stats || [];
  state.x = points.map((p) => Date.parse(p.timestamp) / 1000);
  state.cpu = points.map((p) => p.cpu_percent ?? null);
  state.ram = points.map((p) => p.ram_percent ?? null);
  state.gpu = points.map((p) => p.gpu_percent ?? null);
  state.vram = points.map((p) => p.vram_percent ?? null);
  // Each GPU's own figures, by index; a GPU missing from a point (or its reading) is a gap.
  state.historyGpus = new Map();
  points.forEach((p, i) => {
    for (const g of p.gpus || []) {
      let h = state.historyGpus.get(g.index);
      if (!h) {
        h = { util: points.map(() => null), vram: points.map(() => null) };
        state.historyGpus.set(g.index, h);
      }
      h.util[i] = g.gpu_percent ?? null;
      h.vram[i] = g.vram_percent ?? null;
    }
  });
  state.historyPoints = points.length;
  for (const g of state.gpus) {
    g.util = gpuSeries(g.index, 'util');
    g.vram = gpuSeries(g.index, 'vram');
  }
  state.historyHours = answer.time_range?.hours;
  const res = answer.resolution_seconds;
  note.textContent = `${points.length} points from ${answer.total_count} samples`
    + `${typeof res === 'number' ? `, ${res < 10 ? res.toFixed(1) : Math.round(res)} s each` : ''}`
    + ` (${answer.source})${answer.warning ? ` — ${answer.warning}` : ''}; live samples follow.`;
  rebuild();
}

export function setRange(hours) {
  state.hours = hours;
  return backfill();
}

export function setThresholds(constraints) {
  const before = JSON.stringify(state.thresholds);
  state.thresholds = constraints;
  if (JSON.stringify(constraints) !== before) {
    for (const chart of Object.values(state.charts)) chart.redraw(false, false);
  }
}

/** Keeps charts as wide as their boxes, and in the page's colours. */
export function watchLayout() {
  const resize = new ResizeObserver(() => {
    const boxes = containers();
    for (const [name, chart] of Object.entries(state.charts)) {
      const width = boxes[name].clientWidth;
      if (width > 0 && Math.abs(width - chart.width) > 1) chart.setSize({ width, height: HEIGHT });
    }
  });
  for (const box of Object.values(containers())) resize.observe(box);
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', rebuild);
}
