// The DM roster (`/campaigns/{id}`): every character of the campaign as a card (portrait
// thumbnail, name, class, level, HP) linking to its sheet, and "generate missing portraits",
// which queues one job per character without a portrait and shows each job's progress.

import { api, el, enc, messageOf } from './api.js';
import { initAuth, signInNotice } from './auth.js';
import { describe, failureText, followJob } from './jobs.js';

const $ = (id) => document.getElementById(id);
const campaignId = decodeURIComponent(window.location.pathname.split('/')[2] || '');
let roster = [];

function portraitOf(c, url) {
  if (url) return el('img', { class: 'card-portrait', src: url, alt: `Portrait of ${c.name}` });
  return el('div', { class: 'card-portrait placeholder', role: 'img', 'aria-label': `${c.name} has no portrait yet` },
    el('span', { text: 'No portrait' }));
}

function card(c) {
  const hp = c.hit_points_max !== null && c.hit_points_max !== undefined
    ? `HP ${c.hit_points_current ?? c.hit_points_max} / ${c.hit_points_max}` : 'HP not set';
  const hpBar = c.hit_points_max
    ? el('meter', { min: 0, max: c.hit_points_max, value: Math.max(0, c.hit_points_current ?? c.hit_points_max), low: c.hit_points_max * 0.34, high: c.hit_points_max * 0.67, optimum: c.hit_points_max, 'aria-label': hp })
    : null;
  const sheet = `/characters/${enc(c.id)}?campaign=${enc(campaignId)}`;
  return el('li', { class: 'card', 'data-character-id': c.id },
    el('a', { href: sheet, class: 'card-link', 'aria-label': `${c.name}: open the character sheet` },
      portraitOf(c, c.portrait_url)),
    el('div', { class: 'card-body' },
      el('h2', {}, el('a', { href: sheet, text: c.name })),
      el('p', { class: 'card-class', text: `${[c.race, c.character_class].filter(Boolean).join(' ') || 'Adventurer'} · Level ${c.level}` }),
      el('p', { class: 'card-hp', text: hp }), hpBar,
      el('div', { class: 'card-job', hidden: true },
        el('progress', { max: 100 }), el('p', { class: 'card-job-text', role: 'status' }))));
}

function render() {
  const ul = $('roster');
  ul.replaceChildren(...roster.map(card));
  if (!roster.length) ul.append(el('li', { class: 'hint', text: 'No characters in this campaign yet.' }));
  const missing = roster.filter((c) => !c.portrait_url).length;
  const button = $('generate-missing');
  button.disabled = missing === 0;
  button.textContent = missing ? `Generate missing portraits (${missing})` : 'Every character has a portrait';
}

function jobView(characterId) {
  const li = $('roster').querySelector(`[data-character-id="${CSS.escape(characterId)}"]`);
  const box = li.querySelector('.card-job');
  const bar = box.querySelector('progress');
  const text = box.querySelector('.card-job-text');
  box.hidden = false;
  return {
    show({ percent, text: t }) {
      if (percent === null) bar.removeAttribute('value');
      else bar.setAttribute('value', String(percent));
      if (t) text.textContent = t;
    },
    fail(t) {
      bar.hidden = true;
      text.textContent = t;
      text.className = 'card-job-text error';
    },
    portrait(url, name) {
      li.querySelector('.card-portrait').replaceWith(portraitOf({ name }, url));
      box.hidden = true;
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Queues one character's portrait (waiting while the queue is full) and follows it. */
async function paint(c) {
  const view = jobView(c.id);
  view.show({ percent: null, text: 'Sending…' });
  let accepted;
  for (;;) {
    try {
      // regenerate: false, so a portrait painted meanwhile is kept rather than repainted.
      accepted = await api.post(`/api/characters/${enc(c.id)}/portrait/generate?async=true`, { regenerate: false });
      break;
    } catch (e) {
      if (e.errorType !== 'queue_full') {
        view.fail(failureText(e));
        return false;
      }
      const wait = Math.min(Math.max(e.retryAfter || 2, 1), 30);
      view.show({ percent: null, text: `Queue full: trying again in ${wait} s` });
      await sleep(wait * 1000);
    }
  }
  let end = accepted.job_id ? null : { type: 'done', result: accepted };
  if (!end) {
    try {
      end = await followJob(accepted.job_id, (ev) => view.show(describe(ev)));
    } catch (e) {
      end = { type: 'failed', error: { message: messageOf(e) } };
    }
  }
  if (end.type !== 'done') {
    view.fail(failureText(end));
    return false;
  }
  view.portrait(end.result.thumbnail_url || end.result.portrait_url, c.name);
  c.portrait_url = end.result.portrait_url;
  return true;
}

async function generateMissing() {
  const missing = roster.filter((c) => !c.portrait_url);
  if (!missing.length) return;
  const button = $('generate-missing');
  button.disabled = true;
  let done = 0;
  let ok = 0;
  const status = () => {
    $('roster-status').textContent = `${done} of ${missing.length} finished${ok < done ? ` (${done - ok} failed)` : ''}`;
  };
  status();
  await Promise.all(missing.map(async (c) => {
    if (await paint(c)) ok += 1;
    done += 1;
    status();
  }));
  const left = roster.filter((c) => !c.portrait_url).length;
  button.disabled = left === 0;
  button.textContent = left ? `Generate missing portraits (${left})` : 'Every character has a portrait';
}

async function main() {
  const auth = await initAuth();
  if (!auth.signedIn) {
    signInNotice($('main'));
    return;
  }
  try {
    const [campaign, list] = await Promise.all([
      api.get(`/api/campaigns/${enc(campaignId)}`),
      api.get(`/api/campaigns/${enc(campaignId)}/characters`),
    ]);
    document.title = `${campaign.name} · limner`;
    $('campaign-name').textContent = campaign.name;
    $('campaign-description').textContent = campaign.description || '';
    roster = list;
    render();
  } catch (e) {
    $('roster-message').textContent = e.status === 404 ? 'This campaign does not exist, or is not yours to see.' : messageOf(e);
    $('roster-message').className = 'message error';
  }
  $('generate-missing').addEventListener('click', generateMissing);
  document.body.dataset.ready = 'true';
}

main();
