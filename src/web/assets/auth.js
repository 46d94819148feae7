// Sign-in for every page: a `?token=` link (what `limner serve` prints on first start) is moved
// into localStorage and removed from the address bar; a form accepts a pasted token; Sign out
// forgets it. With `--no-auth` the server needs no token and the bar says so.

import { api, clearToken, el, getToken, setToken } from './api.js';

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get('token');
  if (!token) return;
  setToken(token);
  url.searchParams.delete('token');
  // The token must not stay in the history or be bookmarked by accident.
  window.history.replaceState(null, '', url.pathname + url.search + url.hash);
}

function signInForm(box, note) {
  const input = el('input', {
    id: 'token-input', type: 'password', autocomplete: 'current-password', required: true,
    'aria-describedby': 'token-error',
  });
  const error = el('span', { id: 'token-error', class: 'field-error', role: 'alert', text: note || '' });
  const form = el('form', { class: 'signin', 'aria-label': 'Sign in' },
    el('label', { for: 'token-input', text: 'Access token' }), input,
    el('button', { type: 'submit', text: 'Sign in' }), error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!input.value.trim()) {
      error.textContent = 'Paste the token that `limner serve` or `limner token create` printed.';
      input.focus();
      return;
    }
    setToken(input.value);
    try {
      await api.get('/api/models');
      window.location.reload();
    } catch (e) {
      clearToken();
      error.textContent = e.status === 401 ? 'That token was refused.' : e.message;
      input.focus();
    }
  });
  box.replaceChildren(form);
}

/**
 * Fills the header's `#auth` box and tells the page whether it may call the API:
 * resolves to `{ required, signedIn }`.
 */
export async function initAuth() {
  takeTokenFromUrl();
  const box = document.getElementById('auth');
  let required = true;
  try {
    const health = await fetch('/health').then((r) => r.json());
    required = health.auth !== false;
  } catch {
    // Unknown: assume a token is needed; API calls will say more.
  }
  window.addEventListener('limner:unauthorized', () => {
    // The sign-in form reports its own refusals.
    if (document.getElementById('token-input')) return;
    clearToken();
    signInForm(box, 'Your token was refused or revoked: sign in again.');
  });
  if (!required) {
    box.replaceChildren(el('span', { class: 'auth-state', text: 'Local mode: no sign-in needed' }));
    return { required, signedIn: true };
  }
  if (!getToken()) {
    signInForm(box);
    return { required, signedIn: false };
  }
  const out = el('button', { type: 'button', id: 'sign-out', text: 'Sign out' });
  out.addEventListener('click', () => {
    clearToken();
    window.location.reload();
  });
  box.replaceChildren(el('span', { class: 'auth-state', text: 'Signed in' }), out);
  return { required, signedIn: true };
}

/** Shown in a page's main area while nobody is signed in. */
export function signInNotice(main) {
  document.body.dataset.ready = 'signin';
  main.replaceChildren(el('p', { class: 'notice', role: 'status', text: 'Sign in with your access token (top right) to continue.' }));
}
