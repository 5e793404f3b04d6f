// ssegate's browser client, served by ssegate at /_ssegate/client.js.
//
// `SsegateSource` has the EventSource interface, and never loses an event across a
// reconnect it manages: it resumes from the last id it saw (`last_event_id=`), backs off
// with jitter when the server is down or busy (honouring `Retry-After`), and understands
// ssegate's own events (`ssegate.gap`, `ssegate.shutdown`, `ssegate.expired`).
//
//   <script type="module">
//     import { SsegateSource } from '/_ssegate/client.js';
//     const source = new SsegateSource('/events', { topics: ['tenant/acme/questions'] });
//     source.addEventListener('question:created', (e) => show(JSON.parse(e.data)));
//     source.ongap = () => refetchEverything();
//   </script>
//
// Loaded as a module it also sets `window.SsegateSource`, for scripts that do not import.
// No dependencies; it runs in browsers and in Node 20 (fetch + ReadableStream).

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;

/** Reconnection delay before the server has sent `retry:` (ms). */
const DEFAULT_RETRY = 1000;
/** Longest wait between two attempts while the server stays unreachable (ms). */
const DEFAULT_MAX_RETRY_DELAY = 30000;
/** No byte for this long (ms) means the connection is dead; ssegate sends `: hb` every 15 s. */
const DEFAULT_HEARTBEAT_TIMEOUT = 45000;

/**
 * A streaming parser of the `text/event-stream` format, as the HTML standard defines it.
 * Feed it decoded text in chunks of any size; it calls `onEvent(type, data, lastEventId)`
 * for each complete event and `onRetry(ms)` for each valid `retry:` field.
 */
class SseParser {
  /** The last event ID buffer: kept across events and connections, like EventSource's. */
  lastEventId = '';
  #pending = '';
  #afterCR = false;
  #data = '';
  #type = '';
  #idBuffer = '';

  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
  }

  /** Forgets a partial line or event (a new connection), keeping the last event id. */
  reset() {
    this.#pending = '';
    this.#afterCR = false;
    this.#data = '';
    this.#type = '';
    this.#idBuffer = this.lastEventId;
  }

  /** Parses the next chunk of text. */
  feed(chunk) {
    // A line ends at CRLF, LF or CR. A CR that ends one chunk has already ended its line,
    // so an LF that starts the next chunk is the second half of that CRLF.
    if (this.#afterCR && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.#afterCR = false;
    const text = this.#pending + chunk;
    const eol = /\r\n|\r|\n/g;
    let start = 0;
    let m;
    while ((m = eol.exec(text)) !== null) {
      this.#line(text.slice(start, m.index));
      start = eol.lastIndex;
      if (m[0] === '\r' && start === text.length) this.#afterCR = true;
    }
    this.#pending = text.slice(start);
  }

  #line(line) {
    if (line === '') return this.#dispatch();
    if (line.startsWith(':')) return; // a comment, such as the heartbeat `: hb`
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.#type = value;
        break;
      case 'data':
        this.#data += value + '\n';
        break;
      case 'id':
        if (!value.includes('\0')) this.#idBuffer = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.onRetry(Number(value));
        break;
      default: // unknown fields are ignored
    }
  }

  #dispatch() {
    this.lastEventId = this.#idBuffer;
    const data = this.#data;
    const type = this.#type || 'message';
    this.#data = '';
    this.#type = '';
    if (data === '') return;
    this.onEvent(type, data.slice(0, -1), this.lastEventId);
  }
}

/** Seconds or an HTTP date, as milliseconds from now; `undefined` when absent or invalid. */
function retryAfterMs(value) {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** An `error` event; `status` is the HTTP status when there was one, `retryIn` the wait in
 * ms before the next attempt (absent once the source is closed). */
function errorEvent(status, retryIn, cause) {
  const event = new Event('error');
  Object.assign(event, { status, retryIn, cause });
  return event;
}

/**
 * An EventSource for ssegate streams.
 *
 * `url` is the events path (`/events`, `/events/job/42`, or absolute); the options add
 * `topics` (each as `topic=`), `types` (`type=a,b`), `lastEventId` (where the first
 * connection resumes), `withCredentials`, and `token`: a string or a function returning
 * one (or a promise of one), called before every connection and sent as `access_token=`.
 * `maxRetryDelay` caps the backoff (ms, default 30000); `heartbeatTimeout` (ms, default
 * 45000, 0 turns it off) is how long a silent connection is trusted.
 */
class SsegateSource extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSED = CLOSED;

  /** The events URL as given, made absolute. */
  url;
  /** Whether cookies are sent cross-origin. */
  withCredentials;
  /** `CONNECTING` (0), `OPEN` (1) or `CLOSED` (2). */
  readyState = CONNECTING;

  #init;
  #parser;
  #retry = DEFAULT_RETRY; // the server's `retry:` hint, the base of the backoff
  #failures = 0; // attempts failed in a row since the last open
  #refused = false; // the last attempt was a 401 (retried once with a fresh token)
  #nextDelay; // set by ssegate.shutdown / ssegate.expired / reconnect() for the next wait
  #controller; // aborts the current fetch
  #wake; // ends the current wait early
  #handlers = new Map(); // the on… properties, by event type: { f, listener }
  #origin;

  constructor(url, init = {}) {
    super();
    const base = globalThis.document?.baseURI ?? globalThis.location?.href;
    this.url = new URL(url, base).href;
    this.#origin = new URL(this.url).origin;
    this.withCredentials = Boolean(init.withCredentials);
    this.#init = init;
    this.#parser = new SseParser(
      (type, data, id) => this.#onEvent(type, data, id),
      (ms) => {
        this.#retry = ms;
      },
    );
    this.#parser.lastEventId = init.lastEventId ?? '';
    this.#parser.reset();
    this.#run();
  }

  /** The id of the last event received; the next connection resumes after it. */
  get lastEventId() {
    return this.#parser.lastEventId;
  }

  get onopen() { return this.#handlers.get('open')?.f ?? null; }
  set onopen(f) { this.#setHandler('open', f); }
  get onmessage() { return this.#handlers.get('message')?.f ?? null; }
  set onmessage(f) { this.#setHandler('message', f); }
  get onerror() { return this.#handlers.get('error')?.f ?? null; }
  set onerror(f) { this.#setHandler('error', f); }
  /** Called with the `ssegate.gap` event: events were missed, refetch the page's state. */
  get ongap() { return this.#handlers.get('ssegate.gap')?.f ?? null; }
  set ongap(f) { this.#setHandler('ssegate.gap', f); }

  /** Closes the stream for good: no more events, no reconnection. */
  close() {
    this.readyState = CLOSED;
    this.#controller?.abort();
    this.#wake?.();
  }

  /** Drops the current connection and reconnects after `delay` ms, resuming after the last
   * id: what a network change does, on purpose (the demo's "drop" button). */
  reconnect(delay = 0) {
    if (this.readyState === CLOSED) return;
    this.#nextDelay = delay;
    if (this.#wake) this.#wake(); // already waiting: wait `delay` instead
    else this.#controller?.abort();
  }

  // An on… property is a listener like any other (EventSource's order; an exception in it
  // is reported by dispatchEvent and does not break the stream).
  #setHandler(type, f) {
    const old = this.#handlers.get(type);
    if (old) this.removeEventListener(type, old.listener);
    this.#handlers.delete(type);
    if (typeof f !== 'function') return;
    const listener = (event) => f.call(this, event);
    this.#handlers.set(type, { f, listener });
    this.addEventListener(type, listener);
  }

  #emit(event) {
    this.dispatchEvent(event);
  }

  #onEvent(type, data, id) {
    if (this.readyState !== OPEN) return; // closed, or dropped, while parsing a chunk
    if (type === 'ssegate.shutdown') {
      // The server spreads its clients over the hint; wait exactly that long.
      const hint = Number(safeJson(data)?.retry_ms);
      this.#nextDelay = Number.isFinite(hint) ? hint : this.#retry;
    } else if (type === 'ssegate.expired') {
      this.#nextDelay = 0; // at once, with a fresh token
    }
    this.#emit(new MessageEvent(type, { data, lastEventId: id, origin: this.#origin }));
  }

  /** Connects, reads, and reconnects until closed. */
  async #run() {
    while (this.readyState !== CLOSED) {
      let outcome;
      try {
        outcome = await this.#connect();
      } catch (cause) {
        outcome = { cause }; // a network error, a dead connection or reconnect()
      }
      if (this.readyState === CLOSED) return;
      if (outcome.fatal) {
        this.readyState = CLOSED;
        this.#emit(errorEvent(outcome.status, undefined, outcome.cause));
        return;
      }
      let delay = this.#delay(outcome);
      this.readyState = CONNECTING;
      this.#emit(errorEvent(outcome.status, delay, outcome.cause));
      // Woken early by close(), or by reconnect(d), which sets a new wait.
      while (delay !== undefined && this.readyState !== CLOSED) {
        await this.#sleep(delay);
        delay = this.#nextDelay;
        this.#nextDelay = undefined;
      }
    }
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  /** How long to wait before the next attempt. */
  #delay(outcome) {
    if (this.#nextDelay !== undefined) {
      const d = this.#nextDelay;
      this.#nextDelay = undefined;
      return d;
    }
    if (!outcome.opened) this.#failures += 1;
    // Capped exponential backoff from the server's `retry:`, with "equal jitter": between
    // half and all of the step, so clients dropped together do not come back together.
    const max = this.#init.maxRetryDelay ?? DEFAULT_MAX_RETRY_DELAY;
    const step = Math.min(max, this.#retry * 2 ** Math.min(this.#failures, 30));
    const jittered = Math.round(step / 2 + (Math.random() * step) / 2);
    return Math.max(jittered, outcome.retryAfter ?? 0);
  }

  /** One connection: resolves with how it ended, throws on a network error. */
  async #connect() {
    const controller = new AbortController();
    this.#controller = controller;
    const response = await fetch(await this.#requestUrl(), {
      headers: { Accept: 'text/event-stream' },
      credentials: this.withCredentials ? 'include' : 'same-origin',
      cache: 'no-store',
      signal: controller.signal,
    });
    const status = response.status;
    if (status !== 200) {
      response.body?.cancel().catch(() => {});
      const retryAfter = retryAfterMs(response.headers.get('Retry-After'));
      if (status >= 500 || status === 429 || status === 408) return { status, retryAfter };
      // A refused token is retried once, with a fresh one from `token()`.
      const retryToken = status === 401 && !this.#refused && typeof this.#init.token === 'function';
      this.#refused = status === 401;
      if (retryToken) {
        this.#nextDelay ??= 0;
        return { status };
      }
      return { status, fatal: true }; // 204 (stop), 4xx: retrying cannot help
    }
    const type = response.headers.get('Content-Type') ?? '';
    if (!type.toLowerCase().startsWith('text/event-stream') || !response.body) {
      response.body?.cancel().catch(() => {});
      return { status, fatal: true, cause: new TypeError(`not an event stream: ${type}`) };
    }

    this.#parser.reset();
    this.#failures = 0;
    this.#refused = false;
    this.readyState = OPEN;
    this.#emit(new Event('open'));
    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // strips a leading BOM
    const idleMs = this.#init.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT;
    let idle;
    const arm = () => {
      clearTimeout(idle);
      if (idleMs > 0) idle = setTimeout(() => controller.abort(new Error('no heartbeat')), idleMs);
    };
    try {
      arm();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.readyState !== OPEN) break;
        arm();
        this.#parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (cause) {
      return { opened: true, cause };
    } finally {
      clearTimeout(idle);
      if (this.readyState === OPEN) this.readyState = CONNECTING;
      reader.cancel().catch(() => {});
    }
    return { opened: true }; // the server ended the stream
  }

  /** The URL of the next attempt: topics, types, the resume id and the token. */
  async #requestUrl() {
    const url = new URL(this.url);
    const q = url.searchParams;
    for (const t of this.#init.topics ?? []) q.append('topic', t);
    if (this.#init.types?.length) q.set('type', this.#init.types.join(','));
    if (this.lastEventId) q.set('last_event_id', this.lastEventId);
    const token = this.#init.token;
    const value = typeof token === 'function' ? await token() : token;
    if (value) q.set('access_token', value);
    return url.href;
  }
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

Object.defineProperties(SsegateSource.prototype, {
  CONNECTING: { value: CONNECTING },
  OPEN: { value: OPEN },
  CLOSED: { value: CLOSED },
});

globalThis.SsegateSource = SsegateSource;

// @module-exports (everything below is left out of /_ssegate/client.global.js, the
// classic-script copy for `<script src>` without `type="module"`)
export { SseParser, SsegateSource };
export default SsegateSource;
