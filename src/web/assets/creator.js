// The character creator (`/`): the form (basic fields always visible, the rest in an expandable
// section), saving through the API with its validation messages shown next to the fields, and
// the portrait panel: generate with live progress, cancel, variations, history, "out of date".

import { api, el, enc, messageOf } from './api.js';
import { initAuth, signInNotice } from './auth.js';
import { cancelJob, describe, failureText, followJob } from './jobs.js';
import { FIELDS, VISUAL_FIELDS, fieldLabel } from './schema.js';

const $ = (id) => document.getElementById(id);

const state = {
  id: null, // the saved character, once there is one
  name: '',
  currentPortraitId: null,
  shownPortrait: null, // the portrait record in the frame (a live preview may cover it)
  paintedFrom: null, // form values the current portrait was painted from (null: unknown)
  jobId: null,
  busy: false,
};

// ---- the form -------------------------------------------------------------------------------

function renderFields() {
  for (const f of FIELDS) {
    const id = `f-${f.name}`;
    const common = { id, name: f.name, 'aria-describedby': `err-${f.name}` };
    let input;
    if (f.kind === 'select') {
      input = el('select', common,
        el('option', { value: '', text: f.blank }),
        f.options.map((o) => el('option', { value: o, text: f.labels?.[o] || o })));
    } else if (f.kind === 'textarea') {
      input = el('textarea', { ...common, maxlength: f.max, rows: 4, placeholder: f.placeholder });
    } else {
      input = el('input', {
        ...common, type: 'text', maxlength: f.max, placeholder: f.placeholder, autocomplete: 'off',
        required: f.required, 'aria-required': f.required ? 'true' : null,
      });
    }
    const label = el('label', { for: id, text: f.label }, f.required ? el('span', { class: 'req', text: ' (required)' }) : null);
    const hint = f.hint ? el('p', { class: 'hint', id: `hint-${f.name}`, text: f.hint }) : null;
    if (hint) input.setAttribute('aria-describedby', `hint-${f.name} err-${f.name}`);
    const field = el('div', { class: f.kind === 'textarea' ? 'field wide' : 'field' },
      label, input, hint, el('p', { class: 'field-error', id: `err-${f.name}` }));
    (f.section === 'basic' ? $('basic-fields') : $('advanced-fields')).append(field);
  }
}

function readForm() {
  const v = {};
  for (const f of FIELDS) v[f.name] = $(`f-${f.name}`).value.trim();
  return v;
}

function fillForm(data) {
  for (const f of FIELDS) {
    const input = $(`f-${f.name}`);
    const value = f.format ? f.format(data[f.name]) : data[f.name] ?? '';
    input.value = value;
    // A stored value this page does not list still has to show (and round-trip).
    if (f.kind === 'select' && value && input.value !== value) {
      input.append(el('option', { value, text: value }));
      input.value = value;
    }
  }
}

const PARSERS = Object.fromEntries(FIELDS.filter((f) => f.parse).map((f) => [f.name, f.parse]));

/** POST body: only what was filled in (the server applies its defaults). */
function createBody(v) {
  const body = {};
  for (const [k, x] of Object.entries(v)) if (x) body[k] = PARSERS[k] ? PARSERS[k](x) : x;
  body.name = v.name;
  return body;
}

/** PATCH body: every field; an emptied one becomes null (cleared, or back to its default). */
function patchBody(v) {
  const body = {};
  for (const [k, x] of Object.entries(v)) body[k] = PARSERS[k] ? PARSERS[k](x) : x === '' ? null : x;
  body.name = v.name;
  if (body.backstory === null) body.backstory = '';
  return body;
}

function clearErrors() {
  for (const p of document.querySelectorAll('.field-error')) p.textContent = '';
  for (const i of document.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
  $('form-error').hidden = true;
}

/** Shows an API error next to the field it names (opening the advanced section if needed). */
function showFieldError(err) {
  // `loras[1].weight` is shown at the LoRAs field (the message names the entry).
  const name = err.field ? err.field.replace(/\[.*$/, '') : null;
  const box = name ? $(`err-${name}`) : null;
  if (!box) return false;
  box.textContent = err.field === name ? messageOf(err) : `${err.field}: ${messageOf(err)}`;
  const input = document.querySelector(`[aria-describedby~="err-${name}"]`);
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    const details = input.closest('details');
    if (details) details.open = true;
    input.focus();
  }
  return true;
}

function showFormError(err) {
  if (showFieldError(err)) return;
  $('form-error').textContent = messageOf(err);
  $('form-error').hidden = false;
}

function setCharacter(c) {
  state.id = c.id;
  state.name = c.name;
  window.history.replaceState(null, '', `/?character=${enc(c.id)}`);
  const link = $('sheet-link');
  link.href = `/characters/${enc(c.id)}`;
  link.hidden = false;
  const existing = $('existing');
  if (![...existing.options].some((o) => o.value === c.id)) {
    existing.append(el('option', { value: c.id, text: c.name }));
  }
  existing.value = c.id;
}

async function save() {
  clearErrors();
  const values = readForm();
  try {
    let c;
    if (!state.id) {
      c = await api.post('/api/characters', createBody(values));
      setCharacter(c);
    } else {
      c = await api.patch(`/api/characters/${enc(state.id)}`, patchBody(values));
      state.name = c.name;
    }
    $('save-status').textContent = `Saved at ${new Date().toLocaleTimeString()}`;
    return c;
  } catch (e) {
    $('save-status').textContent = '';
    showFormError(e);
    return null;
  }
}

// ---- the portrait panel ---------------------------------------------------------------------

function setMessage(text, kind = 'info') {
  const m = $('gen-message');
  m.textContent = text;
  m.className = `message ${kind}`;
}

function showProgress({ percent, text }) {
  $('progress-box').hidden = false;
  const bar = $('gen-progress');
  if (percent === null) bar.removeAttribute('value');
  else bar.setAttribute('value', String(percent));
  if (text) $('gen-progress-text').textContent = text;
}

function setBusy(busy) {
  state.busy = busy;
  $('generate').disabled = busy;
  $('make-variation').disabled = busy;
  $('variation').disabled = busy || !state.currentPortraitId;
  for (const b of $('history').querySelectorAll('button')) b.disabled = busy;
  $('cancel').hidden = !busy || !state.jobId;
}

function showPortrait(p) {
  const img = $('portrait');
  state.currentPortraitId = p ? p.id : null;
  state.shownPortrait = p;
  delete img.dataset.preview;
  if (p) {
    img.src = p.portrait_url;
    img.alt = `Portrait of ${state.name || 'the character'}`;
    img.dataset.portraitId = p.id;
  } else {
    img.removeAttribute('src');
    delete img.dataset.portraitId;
  }
  img.hidden = !p;
  $('placeholder').hidden = !!p;
  $('generate').textContent = p ? 'Regenerate' : 'Generate portrait';
  $('variation').disabled = state.busy || !p;
}

/** A running job's live preview in the portrait frame; the finished portrait replaces it. */
function showPreview(ev) {
  if (!ev.image) return;
  const img = $('portrait');
  img.src = ev.image;
  img.alt = `Preview of the portrait being painted: step ${ev.step} of ${ev.total}`;
  img.dataset.preview = String(ev.step);
  img.hidden = false;
  $('placeholder').hidden = true;
}

function renderHistory(list) {
  const ol = $('history');
  const n = list.length;
  ol.replaceChildren(...list.map((p, i) => {
    const when = new Date(p.created_at).toLocaleString();
    const kind = p.parent_portrait_id ? 'variation' : 'portrait';
    const label = `${kind} ${n - i} of ${n}, ${when}${p.is_current ? ' (current)' : ''}`;
    const btn = el('button', {
      type: 'button', class: 'thumb', 'aria-pressed': p.is_current ? 'true' : 'false',
      'aria-label': label, title: label, 'data-portrait-id': p.id, disabled: state.busy,
      onclick: () => makeCurrent(p.id),
    }, el('img', { src: p.thumbnail_url || p.portrait_url, alt: '' }));
    return el('li', { class: p.is_current ? 'current' : null }, btn);
  }));
  if (n === 0) ol.append(el('li', { class: 'hint', text: 'Nothing yet.' }));
}

async function refreshPortraits() {
  if (!state.id) {
    showPortrait(null);
    renderHistory([]);
    return;
  }
  const list = await api.get(`/api/characters/${enc(state.id)}/portraits`);
  showPortrait(list.find((p) => p.is_current) || null);
  renderHistory(list);
}

async function makeCurrent(portraitId) {
  if (state.busy || !state.id) return;
  try {
    await api.post(`/api/characters/${enc(state.id)}/portraits/${enc(portraitId)}/current`);
    // The chosen portrait's inputs are unknown here; take the form as it is now.
    state.paintedFrom = readForm();
    await refreshPortraits();
    setMessage('Made that portrait current.', 'ok');
    $('history').querySelector(`[data-portrait-id="${CSS.escape(portraitId)}"]`)?.focus();
  } catch (e) {
    setMessage(`Could not switch portraits: ${messageOf(e)}`, 'error');
  }
  updateStale();
}

function updateStale() {
  const notice = $('stale');
  if (!state.currentPortraitId || !state.paintedFrom) {
    notice.hidden = true;
    return;
  }
  const now = readForm();
  const changed = VISUAL_FIELDS.filter((n) => (now[n] || '') !== (state.paintedFrom[n] || ''));
  notice.hidden = changed.length === 0;
  notice.textContent = changed.length
    ? `Portrait out of date: ${changed.map(fieldLabel).join(', ')} changed since it was painted. Regenerate to update it.`
    : '';
}

/** Shows what a portrait in the chosen style costs here, from the server's measured speed. */
async function updateEstimate() {
  const out = $('estimate');
  const body = {};
  const style = $('art_style').value;
  if (style) body.art_style = style;
  try {
    const e = await api.post('/api/portraits/estimate', body);
    const scale = e.hires ? e.hr_scale : 1;
    const what = `${Math.round(e.width * scale)}x${Math.round(e.height * scale)}, ${e.steps} steps${e.hires ? ', hires fix' : ''}, on this ${e.device}`;
    out.textContent = e.text
      ? `Estimated time: ${e.text} (${what}).`
      : `Estimated time: known after the first portrait on this machine (${what}).`;
  } catch (e) {
    out.textContent = `No time estimate: ${messageOf(e)}`;
  }
}

/** Submits a job, follows it to the end and shows the outcome. */
async function runJob(submit, doneText) {
  setBusy(true);
  const snapshot = readForm();
  setMessage('');
  showProgress({ percent: null, text: 'Sending…' });
  let accepted;
  try {
    accepted = await submit();
  } catch (e) {
    $('progress-box').hidden = true;
    setBusy(false);
    if (!showFieldError(e)) setMessage(failureText(e), 'error');
    return;
  }
  if (!accepted.job_id) {
    // A synchronous reply (the server had a portrait already).
    $('progress-box').hidden = true;
    await refreshPortraits();
    setBusy(false);
    return;
  }
  state.jobId = accepted.job_id;
  $('cancel').hidden = false;
  let end;
  try {
    end = await followJob(accepted.job_id, (ev) => {
      if (ev.type !== 'failed' && ev.type !== 'cancelled') showProgress(describe(ev));
    }, { onPreview: showPreview });
  } catch (e) {
    end = { type: 'failed', error: { message: messageOf(e) } };
  }
  const wasCancel = document.activeElement === $('cancel');
  state.jobId = null;
  if (end.type === 'done') {
    state.paintedFrom = snapshot;
    try {
      await refreshPortraits();
      const ms = end.result?.generation_time_ms ?? end.result?.generationData?.generationTimeMs;
      setMessage(`${doneText}${ms ? ` in ${(ms / 1000).toFixed(1)} s` : ''}.`, 'ok');
    } catch (e) {
      setMessage(`The portrait was painted but could not be loaded: ${messageOf(e)}`, 'error');
    }
  } else {
    $('progress-box').hidden = true;
    // No new portrait: the frame goes back from the preview to the one it showed before.
    if ($('portrait').dataset.preview) showPortrait(state.shownPortrait);
    if (end.type === 'timeout') cancelJob(accepted.job_id).catch(() => {});
    const quiet = end.type === 'cancelled' && end.error?.kind !== 'timeout';
    setMessage(failureText(end), quiet ? 'info' : 'error');
  }
  setBusy(false);
  if (wasCancel) $('generate').focus();
  updateStale();
  // Every job that ran a step refines the measurement.
  updateEstimate();
}

async function generate() {
  if (state.busy) return;
  clearErrors();
  if (!(await save())) return;
  const body = { regenerate: true };
  const style = $('art_style').value;
  const extra = $('custom_prompt_additions').value.trim();
  if (style) body.art_style = style;
  if (extra) body.custom_prompt_additions = extra;
  await runJob(() => api.post(`/api/characters/${enc(state.id)}/portrait/generate?async=true`, body), 'Portrait ready');
}

async function variation() {
  if (state.busy || !state.currentPortraitId) return;
  clearErrors();
  if (!(await save())) return;
  const body = {
    newPrompt: $('variation-prompt').value.trim(),
    denoisingStrength: Number($('denoise').value),
  };
  await runJob(() => api.post(`/api/characters/${enc(state.id)}/regenerate-image?async=true`, body), 'Variation ready');
}

// ---- starting points ------------------------------------------------------------------------

let pregenerated = [];

async function loadStyles() {
  const models = await api.get('/api/models');
  const select = $('art_style');
  const styles = models.styles || [];
  select.replaceChildren(...styles.map((s) => el('option', { value: s, text: s[0].toUpperCase() + s.slice(1) })));
  if (styles.includes('default')) select.value = 'default';
}

/** Names the LoRA and embedding fields' hints with what the server has. */
async function loadNetworks() {
  const [loras, embeddings] = await Promise.all([api.get('/api/loras'), api.get('/api/embeddings')]);
  for (const [field, list] of [['loras', loras.loras], ['embeddings', embeddings.embeddings]]) {
    const hint = $(`hint-${field}`);
    const names = (list || []).map((x) => x.name);
    const base = FIELDS.find((f) => f.name === field).hint;
    hint.textContent = names.length ? `${base} Available: ${names.join(', ')}.` : `${base} None installed yet.`;
  }
}

async function loadPregenerated() {
  pregenerated = await api.get('/api/pregenerated');
  $('pregen').append(...pregenerated.map((p) => el('option', {
    value: p.id, text: [p.name, [p.race, p.character_class].filter(Boolean).join(' ')].filter(Boolean).join(': '),
  })));
}

async function loadExisting() {
  const list = await api.get('/api/characters?limit=200');
  $('existing').append(...list.map((c) => el('option', { value: c.id, text: c.name })));
}

async function loadCampaigns() {
  const list = await api.get('/api/campaigns?limit=100');
  const nav = $('campaigns');
  nav.replaceChildren(el('span', { text: 'Campaign rosters: ' }),
    ...list.map((c) => el('a', { href: `/campaigns/${enc(c.id)}`, text: c.name })));
  nav.hidden = list.length === 0;
}

function usePregenerated() {
  const p = pregenerated.find((x) => x.id === $('pregen').value);
  if (!p) {
    $('start-status').textContent = 'Choose a pregenerated character first.';
    $('pregen').focus();
    return;
  }
  clearErrors();
  state.id = null;
  state.paintedFrom = null;
  fillForm(p);
  window.history.replaceState(null, '', '/');
  $('existing').value = '';
  $('sheet-link').hidden = true;
  showPortrait(null);
  renderHistory([]);
  updateStale();
  $('start-status').textContent = `Loaded ${p.name} as a starting point: edit anything, then save or generate to create your copy.`;
  $('f-name').focus();
}

async function loadCharacter(id) {
  const c = await api.get(`/api/characters/${enc(id)}`);
  fillForm(c);
  setCharacter(c);
  state.paintedFrom = readForm();
  await refreshPortraits();
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $('character-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    save();
  });
  $('character-form').addEventListener('input', (ev) => {
    ev.target.removeAttribute?.('aria-invalid');
    const err = ev.target.name && $(`err-${ev.target.name}`);
    if (err) err.textContent = '';
    updateStale();
  });
  $('character-form').addEventListener('change', updateStale);
  $('generate').addEventListener('click', generate);
  $('art_style').addEventListener('change', updateEstimate);
  $('make-variation').addEventListener('click', variation);
  $('cancel').addEventListener('click', async () => {
    if (!state.jobId) return;
    $('gen-progress-text').textContent = 'Cancelling…';
    try {
      await cancelJob(state.jobId);
    } catch (e) {
      setMessage(`Could not cancel: ${messageOf(e)}`, 'error');
    }
  });
  $('denoise').addEventListener('input', () => {
    $('denoise-out').textContent = Number($('denoise').value).toFixed(2);
  });
  $('pregen-use').addEventListener('click', usePregenerated);
  // A button, not `change`: arrowing through a closed select must not navigate away.
  $('existing-open').addEventListener('click', () => {
    const id = $('existing').value;
    window.location.href = id ? `/?character=${enc(id)}` : '/';
  });
}

async function main() {
  renderFields();
  wire();
  const auth = await initAuth();
  if (!auth.signedIn) {
    signInNotice($('main'));
    return;
  }
  const problems = [];
  const attempt = (what, p) => p.catch((e) => problems.push(`${what}: ${messageOf(e)}`));
  await Promise.all([
    attempt('art styles', loadStyles()),
    attempt('pregenerated characters', loadPregenerated()),
    attempt('your characters', loadExisting()),
    attempt('campaigns', loadCampaigns()),
    attempt('LoRAs and embeddings', loadNetworks()),
  ]);
  const id = new URL(window.location.href).searchParams.get('character');
  if (id) await attempt('the character', loadCharacter(id));
  else renderHistory([]);
  if (problems.length) $('start-status').textContent = `Could not load ${problems.join('; ')}`;
  await updateEstimate();
  document.body.dataset.ready = 'true';
}

main();
