// End-to-end test of limner's web UI in Debian's headless chromium (driven by playwright-core).
//
//   node tests/browser/ui.mjs <base_url> <screenshot_dir> [<sign_in_url>]
//
// Expects a running `limner serve --no-auth --model tiny-fixture` at <base_url>, and optionally
// the `sign in: http://.../?token=...` link of a second server with authentication (tests/web_ui.rs
// starts both). Exits non-zero, naming the step, when anything a user would notice goes wrong.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, outDir, signInUrl] = process.argv.slice(2);
if (!base || !outDir) {
  console.error('usage: node ui.mjs <base_url> <screenshot_dir>');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TIMEOUT = 60_000;

let current = 'starting';
const step = (name) => {
  current = name;
  console.log(`[ui] ${name}`);
};
const check = (cond, msg) => {
  if (!cond) throw new Error(msg);
};
const watchdog = setTimeout(() => {
  console.error(`[ui] FAILED: the whole run took over 8 minutes (last step: ${current})`);
  process.exit(3);
}, 8 * 60_000);

/** Calls the API directly (the test's own setup, not the page's). */
async function apiCall(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

const pageErrors = [];
function watch(page, label) {
  page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of (409|422|429)/.test(m.text())) console.log(`[ui] ${label} console: ${m.text()}`);
  });
  page.setDefaultTimeout(TIMEOUT);
}

async function ready(page) {
  await page.waitForSelector('body[data-ready="true"]');
}

/** Waits until the <img> is shown and decoded (a real picture, naturalWidth > 0). */
async function imageLoaded(page, selector) {
  await page.waitForFunction((sel) => {
    const img = document.querySelector(sel);
    return img && !img.hidden && img.complete && img.naturalWidth > 0;
  }, selector);
}

async function noHorizontalScroll(page, width) {
  const sw = await page.evaluate(() => document.documentElement.scrollWidth);
  check(sw <= width + 1, `the page is ${sw}px wide on a ${width}px screen (horizontal scrolling)`);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

try {
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await desktop.newPage();
  watch(page, 'desktop');

  step('open the creator');
  await page.goto(`${base}/`);
  await ready(page);
  check(await page.isVisible('#f-name'), 'the name field is not visible');
  check(!(await page.isVisible('#f-attire')), 'the advanced section should start collapsed');
  check((await page.textContent('#auth')).includes('no sign-in'), 'the --no-auth server should need no sign-in');
  const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id || e.name));
  check(unlabeled.length === 0, `fields without a label: ${unlabeled.join(', ')}`);
  const raceOptions = await page.$$eval('#f-race option', (os) => os.map((o) => o.value));
  check(raceOptions.includes('Dark Elf') && raceOptions.includes('Half-Orc'), `race options: ${raceOptions}`);
  const styles = await page.$$eval('#art_style option', (os) => os.map((o) => o.value));
  check(styles.includes('fantasy'), `art styles from /api/models: ${styles}`);

  step('a pregenerated character is a starting point');
  const pregen = (await apiCall('GET', '/api/pregenerated')).body;
  check(pregen.length > 0, 'no pregenerated characters');
  const pick = pregen[1] || pregen[0];
  await page.selectOption('#pregen', pick.id);
  await page.click('#pregen-use');
  check(await page.inputValue('#f-name') === pick.name, 'the pregenerated name was not filled in');
  check(await page.inputValue('#f-attire') === (pick.attire || ''), 'the pregenerated attire was not filled in');
  check(await page.inputValue('#f-character_class') === (pick.character_class || ''), 'the pregenerated class was not chosen');

  step('error path: a 101-character name shows the API message next to the name');
  await page.$eval('#f-name', (e) => e.removeAttribute('maxlength'));
  await page.fill('#f-name', 'x'.repeat(101));
  await page.click('#save');
  await page.waitForFunction(() => document.getElementById('err-name').textContent.includes('at most 100'));
  check(await page.getAttribute('#f-name', 'aria-invalid') === 'true', 'the name field is not marked invalid');

  step('error path: an unknown race shows the allowed values next to the race');
  await page.fill('#f-name', 'Aria Vell');
  await page.$eval('#f-race', (s) => s.append(new Option('Elf', 'Elf')));
  await page.selectOption('#f-race', 'Elf');
  await page.click('#save');
  await page.waitForFunction(() => /unknown race.*High Elf/.test(document.getElementById('err-race').textContent));
  check(await page.textContent('#err-name') === '', 'the old name error should be gone');

  step('fill the basic and advanced sections');
  await page.selectOption('#f-race', 'High Elf');
  await page.selectOption('#f-gender', 'Female');
  await page.selectOption('#f-character_class', 'Wizard');
  await page.click('#advanced summary');
  await page.selectOption('#f-age_category', 'Adult');
  await page.selectOption('#f-build', 'Slender');
  await page.fill('#f-height_description', 'tall');
  await page.selectOption('#f-facial_expression', 'Serene');
  await page.fill('#f-facial_features', 'silver eyes, sharp cheekbones');
  await page.fill('#f-attire', 'midnight-blue robes with silver stars');
  await page.fill('#f-primary_weapon', 'crystal-topped staff');
  await page.fill('#f-distinguishing_feature', 'glowing runic tattoo on the brow');
  await page.fill('#f-background_setting', 'ancient library');
  await page.selectOption('#f-pose', 'Casting Spell');
  await page.selectOption('#art_style', 'fantasy');

  step('the estimate near the button: unknown before any portrait was painted here');
  await page.waitForFunction(() => document.getElementById('estimate').textContent.includes('Estimated time'));
  check((await page.textContent('#estimate')).includes('known after the first portrait'),
    `a fresh server has no measurement yet: ${await page.textContent('#estimate')}`);

  step('generate: the progress bar moves, a live preview shows in the frame, then the portrait loads');
  await page.evaluate(() => {
    // Every src the portrait frame shows, in order: each change's old value, then the current.
    window.__frameOld = [];
    const frame = document.getElementById('portrait');
    new MutationObserver((ms) => { for (const m of ms) window.__frameOld.push(m.oldValue); })
      .observe(frame, { attributes: true, attributeFilter: ['src'], attributeOldValue: true });
    window.__frames = () => [...window.__frameOld.slice(1), frame.getAttribute('src')];
    window.__progress = [];
    const bar = document.getElementById('gen-progress');
    const text = document.getElementById('gen-progress-text');
    const record = () => window.__progress.push({ value: bar.getAttribute('value'), text: text.textContent });
    new MutationObserver(record).observe(bar, { attributes: true, attributeFilter: ['value'] });
    new MutationObserver(record).observe(text, { childList: true, characterData: true, subtree: true });
  });
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('gen-message').textContent.includes('Portrait ready'));
  await imageLoaded(page, '#portrait');
  const frames = await page.evaluate(() => window.__frames());
  console.log(`[ui] frame srcs: ${JSON.stringify(frames.map((f) => (f || '').slice(0, 40)))}`);
  const firstPreview = frames.findIndex((f) => /^data:image\/(png|jpeg);base64,/.test(f || ''));
  const finalSrc = frames[frames.length - 1] || '';
  check(firstPreview >= 0, `the frame never showed a live preview: ${JSON.stringify(frames.map((f) => (f || '').slice(0, 40)))}`);
  check(finalSrc.includes('/api/media/images/'), `the frame does not end on the painted portrait: ${finalSrc.slice(0, 60)}`);
  check(firstPreview < frames.length - 1, 'the preview did not come before the final image');
  check(!(await page.getAttribute('#portrait', 'data-preview')), 'the finished portrait is still marked as a preview');
  const seen = await page.evaluate(() => window.__progress);
  console.log(`[ui] progress seen: ${JSON.stringify(seen.slice(0, 12))}`);
  const moving = seen.some((p) => {
    const v = Number(p.value);
    const m = /Step (\d+) of (\d+)/.exec(p.text);
    return (p.value !== null && v > 0 && v < 100) || (m && Number(m[1]) < Number(m[2]));
  });
  check(moving, 'never saw the progress bar between 0 and 100 (or "Step i of N" before the end)');
  check(seen.some((p) => /Step \d+ of \d+ · [\d.]+ s/.test(p.text)), 'no "Step i of N · elapsed" text');
  const characterId = new URL(page.url()).searchParams.get('character');
  check(characterId, 'the creator did not put the saved character in the address');
  const saved = (await apiCall('GET', `/api/characters/${characterId}`)).body;
  check(saved.race === 'High Elf' && saved.pose === 'Casting Spell' && saved.attire.includes('midnight'),
    `the character was not saved as filled in: ${JSON.stringify(saved)}`);
  const firstId = await page.getAttribute('#portrait', 'data-portrait-id');
  check(saved.current_portrait_id === firstId, 'the page shows a different portrait than the current one');
  check(await page.textContent('#generate') === 'Regenerate', 'Generate should become Regenerate');

  step('after a portrait, the estimate comes from the measured speed');
  await page.waitForFunction(() => /Estimated time: about \d+ s/.test(document.getElementById('estimate').textContent));
  const measured = (await apiCall('POST', '/api/portraits/estimate', { art_style: 'fantasy' })).body;
  check(measured.measured_jobs >= 1 && measured.seconds > 0, `no measurement after a portrait: ${JSON.stringify(measured)}`);
  check((await page.textContent('#estimate')).includes(measured.text), `the page does not show the API's ${measured.text}`);

  step('editing a field marks the portrait out of date');
  check(!(await page.isVisible('#stale')), 'out-of-date notice shown before any edit');
  await page.fill('#f-attire', 'crimson robes with silver stars');
  await page.waitForSelector('#stale:not([hidden])');
  check((await page.textContent('#stale')).includes('Attire'), 'the notice should name the changed field');

  step('variation: img2img with a prompt and the denoise slider (keyboard)');
  await page.fill('#variation-prompt', 'same character but with a raven on the shoulder');
  await page.focus('#denoise');
  for (let i = 0; i < 4; i += 1) await page.keyboard.press('ArrowRight');
  check(await page.textContent('#denoise-out') === '0.60', `slider output: ${await page.textContent('#denoise-out')}`);
  await page.click('#make-variation');
  await page.waitForFunction(() => document.getElementById('gen-message').textContent.includes('Variation ready'));
  await page.waitForFunction(() => document.querySelectorAll('#history button.thumb').length === 2);
  await imageLoaded(page, '#portrait');
  const secondId = await page.getAttribute('#portrait', 'data-portrait-id');
  check(secondId && secondId !== firstId, 'the variation did not become the current portrait');
  check(!(await page.isVisible('#stale')), 'the notice should go once the portrait is repainted');
  const hist = (await apiCall('GET', `/api/characters/${characterId}/portraits`)).body;
  check(hist.length === 2 && hist[0].parameters?.method === 'img2img_consistency',
    `history after a variation: ${JSON.stringify(hist.map((h) => h.parameters?.method))}`);
  check(Math.abs(Number(hist[0].parameters?.denoising_strength) - 0.6) < 1e-6,
    `the slider's strength did not reach the server: ${JSON.stringify(hist[0].parameters)}`);

  step('history: switch back to the first portrait (keyboard)');
  await page.focus(`#history button[data-portrait-id="${firstId}"]`);
  await page.keyboard.press('Enter');
  await page.waitForFunction((id) => document.getElementById('portrait').dataset.portraitId === id
    && document.querySelector(`#history button[data-portrait-id="${id}"]`).getAttribute('aria-pressed') === 'true', firstId);
  await imageLoaded(page, '#portrait');
  const after = (await apiCall('GET', `/api/characters/${characterId}`)).body;
  check(after.current_portrait_id === firstId, 'the server did not make the first portrait current');
  await page.screenshot({ path: join(outDir, 'creator.png'), fullPage: true });

  step('LoRAs and embeddings pinned to the character: saved, shown after a reload, bad weights named');
  const saveWith = async () => {
    const patched = page.waitForResponse((r) => r.request().method() === 'PATCH' && r.url().includes(`/api/characters/${characterId}`));
    await page.click('#save');
    return patched;
  };
  const openAdvanced = async () => {
    if ((await page.getAttribute('#advanced', 'open')) === null) await page.click('#advanced summary');
  };
  await openAdvanced();
  check((await page.textContent('#hint-loras')).includes('None installed yet'), `LoRA hint: ${await page.textContent('#hint-loras')}`);
  await page.fill('#f-loras', 'moonlit-mage:0.75, starfield');
  await page.fill('#f-embeddings', 'bad-hands');
  check((await saveWith()).status() === 200, 'saving the pinned LoRAs failed');
  const pinned = (await apiCall('GET', `/api/characters/${characterId}`)).body;
  check(JSON.stringify(pinned.loras) === JSON.stringify([{ name: 'moonlit-mage', weight: 0.75 }, { name: 'starfield', weight: 1 }]),
    `pinned LoRAs on the server: ${JSON.stringify(pinned.loras)}`);
  check(JSON.stringify(pinned.embeddings) === '["bad-hands"]', `pinned embeddings: ${JSON.stringify(pinned.embeddings)}`);
  await page.reload();
  await ready(page);
  await openAdvanced();
  check(await page.inputValue('#f-loras') === 'moonlit-mage:0.75, starfield', `LoRAs after reload: ${await page.inputValue('#f-loras')}`);
  check(await page.inputValue('#f-embeddings') === 'bad-hands', 'embeddings after reload');
  await page.fill('#f-loras', 'moonlit-mage:99');
  check((await saveWith()).status() === 422, 'a LoRA weight of 99 should be refused');
  const loraErr = await page.textContent('#err-loras');
  check(loraErr.includes('loras[0].weight') && loraErr.includes('10'), `the LoRA error should name the entry and the limit: ${loraErr}`);
  // Unpinned again: the fixture server has no LoRA files for later paintings.
  await page.fill('#f-loras', '');
  await page.fill('#f-embeddings', '');
  check((await saveWith()).status() === 200, 'unpinning failed');
  const unpinned = (await apiCall('GET', `/api/characters/${characterId}`)).body;
  check(unpinned.loras.length === 0 && unpinned.embeddings.length === 0, `still pinned: ${JSON.stringify(unpinned)}`);

  step('phone width: one column, no sideways scrolling');
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true });
  const mobile = await phone.newPage();
  watch(mobile, 'phone');
  await mobile.goto(`${base}/?character=${characterId}`);
  await ready(mobile);
  await imageLoaded(mobile, '#portrait');
  await noHorizontalScroll(mobile, 390);
  const stacked = await mobile.evaluate(() => {
    const form = document.getElementById('character-form').getBoundingClientRect();
    const panel = document.querySelector('.portrait-panel').getBoundingClientRect();
    return panel.top >= form.bottom - 1;
  });
  check(stacked, 'the portrait panel should sit under the form on a phone');
  await mobile.screenshot({ path: join(outDir, 'creator-phone.png'), fullPage: true });

  step('character sheet shows the portrait');
  await page.click('#sheet-link');
  await page.waitForURL(`**/characters/${characterId}`);
  await ready(page);
  await imageLoaded(page, '#sheet-portrait');
  check(await page.textContent('#sheet-name') === 'Aria Vell', 'sheet name');
  check((await page.textContent('#sheet-stats')).includes('Wizard'), 'the sheet should show the class');

  step('DM roster: cards with thumbnails, then "generate missing portraits"');
  const campaign = await apiCall('POST', '/api/campaigns', { name: 'The Sunless Citadel', description: 'A dungeon under a ravine.' });
  check(campaign.status === 201, `create campaign: ${JSON.stringify(campaign)}`);
  const cid = campaign.body.id;
  const join1 = await apiCall('POST', `/api/campaigns/${cid}/characters`, { character_id: characterId, hit_points_current: 14, hit_points_max: 22, level: 3 });
  check(join1.status === 201, `join: ${JSON.stringify(join1)}`);
  const other = await apiCall('POST', '/api/characters', { name: 'Brakka Stonefist', race: 'dwarf', character_class: 'fighter', campaign_id: cid });
  check(other.status === 201, `second character: ${JSON.stringify(other)}`);
  await page.goto(`${base}/campaigns/${cid}`);
  await ready(page);
  const cardSel = `li.card[data-character-id="${characterId}"]`;
  await imageLoaded(page, `${cardSel} img.card-portrait`);
  const cardText = await page.textContent(cardSel);
  check(cardText.includes('Aria Vell') && cardText.includes('Wizard') && cardText.includes('Level 3') && cardText.includes('HP 14 / 22'),
    `card text: ${cardText}`);
  check(await page.getAttribute(`${cardSel} a.card-link`, 'href') === `/characters/${characterId}?campaign=${cid}`, 'card link to the sheet');
  const otherSel = `li.card[data-character-id="${other.body.id}"]`;
  check(await page.isVisible(`${otherSel} .placeholder`), 'a character without a portrait shows a placeholder');
  await page.evaluate(() => {
    window.__cardJob = [];
    new MutationObserver(() => window.__cardJob.push([...document.querySelectorAll('.card-job-text')].map((t) => t.textContent).join(' ')))
      .observe(document.getElementById('roster'), { childList: true, characterData: true, subtree: true });
  });
  await page.click('#generate-missing');
  await imageLoaded(page, `${otherSel} img.card-portrait`);
  await page.waitForFunction(() => document.getElementById('roster-status').textContent.includes('1 of 1 finished'));
  const cardJob = await page.evaluate(() => window.__cardJob.filter(Boolean));
  check(cardJob.some((t) => /Queued|Starting|Step \d+ of \d+/.test(t)), `no job progress on the card: ${JSON.stringify(cardJob)}`);
  check((await apiCall('GET', `/api/characters/${other.body.id}`)).body.current_portrait_id, 'the missing portrait was not saved');
  await page.screenshot({ path: join(outDir, 'roster.png'), fullPage: true });
  await mobile.goto(`${base}/campaigns/${cid}`);
  await ready(mobile);
  await imageLoaded(mobile, `${cardSel} img.card-portrait`);
  await noHorizontalScroll(mobile, 390);
  await mobile.screenshot({ path: join(outDir, 'roster-phone.png'), fullPage: true });

  step('the sheet shows the campaign state');
  await page.click(`${cardSel} .card-body a`);
  await ready(page);
  await page.waitForFunction(() => document.getElementById('campaign-state').textContent.includes('14 / 22'));
  check(await page.inputValue('#campaign') === cid, 'the roster link should preselect the campaign');
  check(await page.getAttribute('#roster-link', 'href') === `/campaigns/${cid}`, 'the sheet should link back to the roster');
  await imageLoaded(page, '#sheet-portrait');

  step('error path: a full queue shows a clear message, then queued + Cancel');
  const filler = (await apiCall('POST', '/api/characters', { name: 'Queue Filler' })).body;
  const jobs = [];
  let refused = null;
  for (let i = 0; i < 40 && !refused; i += 1) {
    const r = await apiCall('POST', `/api/characters/${filler.id}/portrait/generate?async=true`, { regenerate: true, width: 256, height: 256, steps: 150 });
    if (r.status === 202) jobs.push(r.body.job_id);
    else if (r.status === 429) refused = r;
    else throw new Error(`filling the queue: ${JSON.stringify(r)}`);
  }
  check(refused && refused.body.error_type === 'queue_full', 'could not fill the queue');
  try {
    await page.goto(`${base}/?character=${characterId}`);
    await ready(page);
    check(await page.isVisible(`#campaigns a[href="/campaigns/${cid}"]`), 'the creator should link to the campaign roster');
    await page.click('#generate');
    await page.waitForFunction(() => /queue is full/i.test(document.getElementById('gen-message').textContent));
    check(await page.isEnabled('#generate'), 'Generate should be usable again after a refusal');
    // Make room for exactly one: the page's job waits in line and can be cancelled.
    await apiCall('DELETE', `/api/jobs/${jobs.pop()}`);
    await page.click('#generate');
    await page.waitForFunction(() => /Queued: position \d+/.test(document.getElementById('gen-progress-text').textContent));
    check(await page.isVisible('#cancel'), 'Cancel should show while a job waits');
    await page.click('#cancel');
    await page.waitForFunction(() => document.getElementById('gen-message').textContent.includes('cancelled'));
    check(!(await page.isVisible('#cancel')), 'Cancel should go away after cancelling');
    const still = (await apiCall('GET', `/api/characters/${characterId}`)).body;
    check(still.current_portrait_id === firstId, 'a cancelled job must not change the portrait');
  } finally {
    for (const j of jobs) await apiCall('DELETE', `/api/jobs/${j}`);
  }

  if (signInUrl) {
    step('sign-in: without a token the page asks for one; a wrong token is refused');
    const authBase = new URL(signInUrl).origin;
    const token = new URL(signInUrl).searchParams.get('token');
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const p = await ctx.newPage();
    watch(p, 'auth');
    await p.goto(`${authBase}/`);
    await p.waitForSelector('body[data-ready="signin"]');
    await p.fill('#token-input', 'not-a-real-token');
    await p.press('#token-input', 'Enter');
    await p.waitForFunction(() => document.getElementById('token-error').textContent.includes('refused'));

    step('sign-in: the printed ?token= link signs in and leaves the address bar');
    await p.goto(signInUrl);
    await ready(p);
    check(!p.url().includes('token='), `the token stayed in the address: ${p.url()}`);
    check(await p.evaluate(() => localStorage.getItem('limner.token')) === token, 'the token was not kept');
    check((await p.textContent('#auth')).includes('Signed in'), 'the header should say signed in');
    check((await p.$$eval('#art_style option', (os) => os.length)) > 0, 'authenticated API calls failed');

    step('sign-in: generation with progress works with a token (SSE with Authorization)');
    await p.evaluate(() => {
      window.__steps = [];
      const text = document.getElementById('gen-progress-text');
      new MutationObserver(() => window.__steps.push(text.textContent)).observe(text, { childList: true, characterData: true, subtree: true });
    });
    await p.fill('#f-name', 'Secured Sam');
    await p.click('#generate');
    await imageLoaded(p, '#portrait');
    const steps = await p.evaluate(() => window.__steps);
    check(steps.some((t) => /Step \d+ of \d+/.test(t)), `no progress events with a token: ${JSON.stringify(steps)}`);

    step('sign-out forgets the token; the form signs in again');
    await p.click('#sign-out');
    await p.waitForSelector('body[data-ready="signin"]');
    check(await p.evaluate(() => localStorage.getItem('limner.token')) === null, 'sign-out kept the token');
    await p.fill('#token-input', token);
    await p.click('#auth button[type="submit"]');
    await p.waitForSelector('body[data-ready="true"]');
    check((await p.textContent('#auth')).includes('Signed in'), 'signing in through the form failed');
    await ctx.close();
  }

  check(pageErrors.length === 0, `uncaught errors in the pages: ${pageErrors.join(' | ')}`);
  console.log(`[ui] PASSED; screenshots in ${outDir}`);
} catch (e) {
  console.error(`[ui] FAILED at "${current}": ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
