// Shared by the browser tests (tests/browser.rs runs each script with `node`): Chromium
// launched the same way every time, publishing, and the JSON-on-stdout protocol.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Debian's Chromium; tests/browser.rs checks it exists and names the package if not. */
const EXECUTABLE = process.env.SSEGATE_CHROMIUM || '/usr/bin/chromium';

/** The flags every run uses: headless, no sandbox (root in CI), nothing that phones home. */
export const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Every wait in a script fails after this long (ms). */
export const TIMEOUT = 15000;

/**
 * Runs `body(page)` in a fresh Chromium (its own user data dir), prints what it returns as
 * one line of JSON on stdout, and exits non-zero with the error on stderr if it throws.
 */
export function run(body) {
  const guard = setTimeout(() => {
    console.error('the script took longer than 120 s');
    process.exit(3);
  }, 120000);
  (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ssegate-chromium-'));
    const context = await chromium.launchPersistentContext(dir, {
      executablePath: EXECUTABLE,
      headless: true,
      args: ARGS,
      viewport: { width: 1200, height: 900 },
      timeout: 60000,
    });
    try {
      context.setDefaultTimeout(TIMEOUT);
      const page = context.pages()[0] ?? (await context.newPage());
      page.on('console', (m) => console.error(`[page ${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => console.error(`[page error] ${e}`));
      return await body(page);
    } finally {
      await context.close();
      rmSync(dir, { recursive: true, force: true });
    }
  })().then(
    (result) => {
      clearTimeout(guard);
      console.log(JSON.stringify(result));
    },
    (err) => {
      console.error(err?.stack ?? String(err));
      process.exit(1);
    },
  );
}

/** Publishes `body` (one event or an array) on ssegate's webhook; returns the ids. */
export async function publish(admin, body) {
  const resp = await fetch(`${admin}/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await resp.json();
  if (!resp.ok) throw new Error(`publish answered ${resp.status}: ${JSON.stringify(json)}`);
  return json.ids;
}

/**
 * Records the requests the page makes to the events path. `streams` grows as requests
 * start; `details()` resolves to each one's URL, kind and Last-Event-ID header (read from
 * the headers as sent, which Chromium completes after the request starts).
 */
export function recordStreams(page) {
  const streams = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (!url.pathname.startsWith('/events')) return;
    streams.push(
      req.allHeaders().then((headers) => ({
        url: url.pathname + url.search,
        kind: req.resourceType(),
        last_event_id_header: headers['last-event-id'] ?? null,
        last_event_id_param: url.searchParams.get('last_event_id'),
      })),
    );
  });
  streams.details = () => Promise.all(streams);
  return streams;
}
