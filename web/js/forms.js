// The "what if" panel, the constraints and optimization editors, and the token field. A refused
// change shows the API's own `detail`, which names the field, the value and what is allowed.

import { call, get, setToken, token } from './api.js';
import { el, fillList, gib, pct } from './format.js';

function showError(id, error) {
  let text = error ? error.message : '';
  if (error && error.status === 401) text += ' — enter the token under "Token".';
  document.getElementById(id).textContent = text;
}

function list(title, className, items) {
  if (!items || items.length === 0) return [];
  const ul = el('ul', className);
  fillList(ul, items);
  return [el('h3', '', title), ul];
}

function renderCheck(a, ownFigure) {
  const yes = a.can_start_generation;
  const facts = [`needs ${gib(a.vram_required_gb)}`];
  // estimate_source describes vramguard's own estimate, not a figure typed in here.
  if (!ownFigure) facts.push(`estimate: ${a.estimate_source}${a.estimate_samples ? ` (${a.estimate_samples} runs)` : ''}`);
  if (a.gpu) {
    facts.push(`${yes ? 'on' : 'best candidate'} GPU #${a.gpu.index}: ${gib(a.gpu.free_gb)} free, `
      + `projected ${pct(a.gpu.projected_percent)}`);
  }
  document.getElementById('whatif-answer').replaceChildren(
    el('p', `verdict ${yes ? 'yes' : 'no'}`, yes ? 'Yes, it can start now.' : 'No, it cannot start now.'),
    el('p', 'muted', facts.join(' · ')),
    ...list('Blocking', 'issues', a.blocking_issues),
    ...list('Recommendations', 'recommendations', a.recommendations),
  );
}

export function setupWhatIf() {
  const form = document.getElementById('whatif');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const query = {};
    const vram = form.elements.vram_required_gb.value.trim();
    const workload = form.elements.workload.value.trim();
    if (vram) query.vram_required_gb = vram;
    if (workload) query.workload = workload;
    if (form.elements.model_loaded.checked) query.model_loaded = 'true';
    try {
      renderCheck(await get('/api/v1/system/resource-check', query), Boolean(vram));
      showError('whatif-error', null);
    } catch (e) {
      document.getElementById('whatif-answer').replaceChildren();
      showError('whatif-error', e);
    }
  });
}

/** The fields of `form` that differ from `loaded`, typed as the API expects. Text that is not a
 *  number is sent as typed, so the API's answer says what is wrong with it. */
function changes(form, loaded) {
  const patch = {};
  for (const [name, before] of Object.entries(loaded)) {
    const input = form.elements[name];
    if (!input) continue;
    let value;
    if (input.type === 'checkbox') value = input.checked;
    else if (typeof before === 'number') {
      const raw = input.value.trim();
      if (raw === '') continue;
      value = Number.isFinite(Number(raw)) ? Number(raw) : raw;
    } else value = input.value;
    if (value !== before) patch[name] = value;
  }
  return patch;
}

function fill(form, values) {
  for (const [name, value] of Object.entries(values)) {
    const input = form.elements[name];
    if (!input) continue;
    if (input.type === 'checkbox') input.checked = Boolean(value);
    else input.value = String(value);
  }
}

/** Wires one editor: GET fills it, Save POSTs what changed, Reset DELETEs. `settingsOf` picks
 *  the settings out of an answer; `onAnswer` shows the rest of it. */
function editor({ id, path, settingsOf, onAnswer }) {
  const form = document.getElementById(id);
  const status = document.getElementById(`${id}-status`);
  let loaded = {};
  const adopt = (answer, message) => {
    loaded = settingsOf(answer);
    fill(form, loaded);
    if (status) status.textContent = message || '';
    onAnswer(answer, loaded);
    showError(`${id}-error`, null);
  };
  const send = async (method, body) => {
    try {
      const answer = await call(method, path, body);
      adopt(answer, answer.message);
    } catch (e) {
      if (status) status.textContent = '';
      showError(`${id}-error`, e);
    }
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const patch = changes(form, loaded);
    if (Object.keys(patch).length === 0) {
      if (status) status.textContent = 'Nothing changed.';
      showError(`${id}-error`, null);
      return;
    }
    send('POST', patch);
  });
  form.querySelector('[data-reset]').addEventListener('click', () => send('DELETE'));
  return async () => {
    try {
      adopt(await get(path));
    } catch (e) {
      showError(`${id}-error`, e);
    }
  };
}

/** Sets up both editors; `onConstraints` hears every constraints answer. Returns the loader. */
export function setupEditors(onConstraints) {
  const loadConstraints = editor({
    id: 'constraints',
    path: '/api/v1/system/constraints',
    settingsOf: (a) => a.constraints || a.updated_constraints,
    onAnswer: (a, constraints) => {
      for (const [name, sentence] of Object.entries(a.description || {})) {
        const input = document.getElementById('constraints').elements[name];
        if (input) input.title = sentence;
      }
      onConstraints(constraints);
    },
  });
  const loadOptimization = editor({
    id: 'optimization',
    path: '/api/v1/system/optimization',
    settingsOf: (a) => a.settings || a,
    onAnswer: (a) => {
      const box = document.getElementById('optimization-answer');
      if (!a.settings) {
        box.replaceChildren();
        return;
      }
      box.replaceChildren(
        el('p', 'ok', a.message),
        el('p', 'muted', `A generation needs ${gib(a.estimated_vram_need_gb)} with these settings `
          + `(${a.estimate_source}), ${gib(a.estimated_vram_savings_gb)} less than fp16 without offload `
          + `at tile 512; VRAM in use now ${gib(a.current_vram_usage_gb)}.`),
        ...list('Recommendations', 'recommendations', a.recommendations),
      );
    },
  });
  return () => Promise.all([loadConstraints(), loadOptimization()]);
}

export function setupToken() {
  const form = document.getElementById('token');
  const status = document.getElementById('token-status');
  const say = () => {
    status.textContent = token()
      ? 'A token is set for this tab (sessionStorage); it is sent with every request.'
      : 'No token set. Kept in this tab only (sessionStorage) when you set one.';
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(form.elements.token.value.trim());
    form.elements.token.value = '';
    say();
  });
  form.querySelector('[data-forget]').addEventListener('click', () => {
    setToken('');
    say();
  });
  say();
}
