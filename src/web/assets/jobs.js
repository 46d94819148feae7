// Following a generation job: its Server-Sent Events read with fetch() (EventSource cannot send
// the Authorization header), falling back to polling `GET /api/jobs/{id}` when the stream drops,
// plus the wording of every state for the progress displays. Live previews go to their own
// callback: they are pictures, not states.

import { ApiError, api, authHeaders, enc, errorFrom } from './api.js';

const TERMINAL = new Set(['done', 'failed', 'cancelled']);

/** One SSE block ("event: x\ndata: {...}") into an event object, or null for comments. */
function parseBlock(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return null;
  try {
    const obj = JSON.parse(data.join('\n'));
    return { ...obj, type: obj.type || name };
  } catch {
    return { type: name, data: data.join('\n') };
  }
}

function statusToEvent(s) {
  switch (s.state) {
    case 'queued': return { type: 'queued', position: s.position ?? 1 };
    case 'running': return s.total ? { type: 'progress', step: s.step, total: s.total, elapsed_ms: s.elapsed_ms } : { type: 'started' };
    case 'done': return { type: 'done', result: s.result };
    case 'failed': return { type: 'failed', error: s.error };
    default: return { type: 'cancelled', error: s.error };
  }
}

async function pollJob(jobId, onEvent, onPreview, signal) {
  let shown = null;
  for (;;) {
    if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
    const s = await api.get(`/api/jobs/${enc(jobId)}`, { signal });
    // A running job's status carries its latest preview (the `preview` event's fields).
    if (s.preview && s.preview.step !== shown) {
      shown = s.preview.step;
      onPreview?.({ type: 'preview', ...s.preview });
    }
    const ev = statusToEvent(s);
    onEvent(ev);
    if (TERMINAL.has(ev.type)) return ev;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/**
 * Calls `onEvent` for every event of the job until it ends, and `onPreview` for each live
 * preview (`{step, total, width, height, image}`, `image` a data: URL); resolves to the terminal
 * event (`done`, `failed`, `cancelled`, or `timeout` when the server went silent for `idleMs`).
 */
export async function followJob(jobId, onEvent, { signal, idleMs = 60000, onPreview } = {}) {
  const ctrl = new AbortController();
  signal?.addEventListener('abort', () => ctrl.abort(), { once: true });
  let timer = null;
  let silent = false;
  // The server sends keep-alive comments, so silence means a dead connection or a stuck server.
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => { silent = true; ctrl.abort(); }, idleMs);
  };
  arm();
  try {
    const res = await fetch(`/api/jobs/${enc(jobId)}/events`, {
      headers: authHeaders({ Accept: 'text/event-stream' }),
      signal: ctrl.signal,
    });
    if (!res.ok) throw await errorFrom(res);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      arm();
      buf = (buf + value).replace(/\r\n?/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = parseBlock(buf.slice(0, i));
        buf = buf.slice(i + 2);
        if (!ev) continue;
        if (ev.type === 'preview') {
          onPreview?.(ev);
          continue;
        }
        onEvent(ev);
        if (TERMINAL.has(ev.type)) {
          ctrl.abort();
          return ev;
        }
      }
    }
  } catch (e) {
    if (silent) {
      return { type: 'timeout', error: { kind: 'timeout', message: `no word from the server for ${Math.round(idleMs / 1000)} s` } };
    }
    if (signal?.aborted) throw e;
    if (e instanceof ApiError && e.status !== 0) throw e;
    // A dropped connection: the job may still be running; ask for its state below.
  } finally {
    clearTimeout(timer);
  }
  return pollJob(jobId, onEvent, onPreview, signal);
}

/** Cancels a job; a job that already finished is not an error here. */
export async function cancelJob(jobId) {
  try {
    await api.del(`/api/jobs/${enc(jobId)}`);
  } catch (e) {
    if (e.status !== 409 && e.status !== 404) throw e;
  }
}

/** `{percent|null, text}` for a progress display; null percent = indeterminate. */
export function describe(ev) {
  switch (ev.type) {
    case 'queued':
      return { percent: null, text: ev.position > 1 ? `Queued: position ${ev.position} in line` : 'Queued: next in line' };
    case 'started':
      return { percent: 0, text: 'Starting…' };
    case 'progress': {
      const pct = ev.total ? Math.round((100 * ev.step) / ev.total) : 0;
      const secs = ((ev.elapsed_ms || 0) / 1000).toFixed(1);
      return { percent: pct, text: `Step ${ev.step} of ${ev.total} · ${secs} s` };
    }
    case 'done':
      return { percent: 100, text: 'Done' };
    default:
      return { percent: null, text: '' };
  }
}

/** The sentence for a job that did not succeed, or a submission that was refused. */
export function failureText(evOrErr) {
  if (evOrErr instanceof ApiError) {
    if (evOrErr.errorType === 'queue_full') {
      const wait = evOrErr.retryAfter ? ` Try again in about ${evOrErr.retryAfter} s.` : ' Try again shortly.';
      return `The generation queue is full right now.${wait}`;
    }
    if (evOrErr.status === 0) return evOrErr.message;
    return `The server refused the request: ${evOrErr.message}`;
  }
  const msg = evOrErr.error?.message || '';
  switch (evOrErr.type) {
    case 'timeout':
      return `Generation timed out (${msg}). The job was cancelled; try again.`;
    case 'cancelled':
      return evOrErr.error?.kind === 'timeout' ? `Generation timed out on the server: ${msg}` : 'Generation cancelled.';
    case 'failed':
      return `Generation failed: ${msg || 'unknown error'}`;
    default:
      return msg;
  }
}
