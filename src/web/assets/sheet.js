// The player character sheet (`/characters/{id}`): portrait, identity, level, and the state of
// the character in a chosen campaign (`?campaign=` preselects one).

import { api, el, enc, messageOf } from './api.js';
import { initAuth, signInNotice } from './auth.js';
import { FIELDS } from './schema.js';

const $ = (id) => document.getElementById(id);
const characterId = decodeURIComponent(window.location.pathname.split('/')[2] || '');

function stat(dl, term, value) {
  if (value === null || value === undefined || value === '') return;
  dl.append(el('div', { class: 'stat' }, el('dt', { text: term }), el('dd', { text: String(value) })));
}

function listText(v) {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) {
    return v.map((x) => (typeof x === 'object' && x !== null ? x.name || x.title || JSON.stringify(x) : String(x))).join(', ');
  }
  if (typeof v === 'object') {
    return Object.entries(v).map(([k, x]) => `${k}: ${typeof x === 'object' ? JSON.stringify(x) : x}`).join(', ');
  }
  return String(v);
}

function render(c) {
  document.title = `${c.name} · limner`;
  $('sheet-name').textContent = c.name;
  $('sheet-summary').textContent = [c.gender, c.race, c.character_class].filter(Boolean).join(' ') || 'No race or class yet';
  const img = $('sheet-portrait');
  if (c.portrait_url) {
    img.src = c.portrait_url;
    img.alt = `Portrait of ${c.name}`;
  }
  img.hidden = !c.portrait_url;
  $('placeholder').hidden = !!c.portrait_url;

  const stats = $('sheet-stats');
  stats.replaceChildren();
  stat(stats, 'Race', c.race);
  stat(stats, 'Class', c.character_class);
  stat(stats, 'Level', c.level);
  stat(stats, 'Type', c.character_type === 'npc' ? 'NPC' : 'Player character');

  const looks = $('sheet-looks');
  looks.replaceChildren();
  for (const f of FIELDS.filter((x) => x.section === 'advanced' && x.name !== 'backstory')) {
    stat(looks, f.label, c[f.name]);
  }
  if (!looks.children.length) looks.append(el('p', { class: 'hint', text: 'No appearance details yet.' }));
  $('backstory-box').hidden = !c.backstory;
  $('sheet-backstory').textContent = c.backstory || '';

  const st = $('campaign-state');
  st.replaceChildren();
  if (c.campaign_id) {
    stat(st, 'Level', c.level);
    if (c.hit_points_max !== null && c.hit_points_max !== undefined) {
      stat(st, 'Hit points', `${c.hit_points_current ?? c.hit_points_max} / ${c.hit_points_max}`);
    }
    stat(st, 'Armor class', c.armor_class);
    stat(st, 'Status', c.status);
    stat(st, 'Location', c.location);
    stat(st, 'Inventory', listText(c.inventory));
    stat(st, 'Quests', listText(c.quests));
    if (!st.children.length) st.append(el('p', { class: 'hint', text: 'No campaign state recorded yet.' }));
  }
  $('roster-link').hidden = !c.campaign_id;
  if (c.campaign_id) $('roster-link').href = `/campaigns/${enc(c.campaign_id)}`;
  $('edit-link').href = `/?character=${enc(c.id)}`;
  $('sheet').hidden = false;
}

async function show(campaignId) {
  const q = campaignId ? `?campaign_id=${enc(campaignId)}` : '';
  try {
    render(await api.get(`/api/characters/${enc(characterId)}${q}`));
    $('sheet-message').textContent = '';
    const url = new URL(window.location.href);
    if (campaignId) url.searchParams.set('campaign', campaignId);
    else url.searchParams.delete('campaign');
    window.history.replaceState(null, '', url.pathname + url.search);
  } catch (e) {
    $('sheet-message').textContent = e.status === 404 ? 'This character does not exist, or is not yours to see.' : messageOf(e);
    $('sheet-message').className = 'message error';
  }
}

async function main() {
  const auth = await initAuth();
  if (!auth.signedIn) {
    signInNotice($('main'));
    return;
  }
  const wanted = new URL(window.location.href).searchParams.get('campaign') || '';
  const select = $('campaign');
  try {
    const campaigns = await api.get(`/api/campaigns?character_id=${enc(characterId)}`);
    select.append(...campaigns.map((c) => el('option', { value: c.id, text: c.name })));
  } catch {
    // The sheet still works without the campaign list.
  }
  if (wanted && ![...select.options].some((o) => o.value === wanted)) {
    select.append(el('option', { value: wanted, text: wanted }));
  }
  select.value = wanted;
  select.addEventListener('change', () => show(select.value));
  await show(wanted);
  document.body.dataset.ready = 'true';
}

main();
