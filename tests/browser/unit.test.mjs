// SsegateSource and its parser in Node (fetch + streams, no browser), against scripted
// HTTP servers: the parts a real ssegate cannot easily be made to do on cue (Retry-After,
// 204, 401, shutdown hints, token renewal, backoff, a silent connection).
//
// node --test unit.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { SseParser, SsegateSource } from '../../src/client/client.js';

/** A server whose n-th request is answered by `handlers[n]` (the last one repeats). */
async function scripted(handlers) {
  const requests = [];
  const server = createServer((req, res) => {
    const n = requests.length;
    requests.push({ url: new URL(req.url, 'http://x'), at: Date.now() });
    handlers[Math.min(n, handlers.length - 1)](req, res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/events`;
  return {
    url,
    requests,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** Answers with an event stream made of `text`, then ends it (unless `open`). */
const stream = (text, { open = false } = {}) => (req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(text);
  if (!open) res.end();
};

const status = (code, headers = {}) => (req, res) => {
  res.writeHead(code, headers);
  res.end();
};

/** Resolves when `check()` is true; fails after `ms`. */
async function until(check, what, ms = 5000) {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A source with every event recorded. */
function watch(url, init) {
  const source = new SsegateSource(url, init);
  const seen = { events: [], errors: [], opens: 0 };
  source.onopen = () => { seen.opens += 1; };
  source.onerror = (e) => seen.errors.push({ status: e.status, retryIn: e.retryIn, state: source.readyState });
  for (const type of ['message', 'note', 'ssegate.gap', 'ssegate.shutdown', 'ssegate.expired']) {
    source.addEventListener(type, (e) => seen.events.push({ type, data: e.data, id: e.lastEventId }));
  }
  return { source, seen };
}

test('the parser follows the HTML standard, whatever the chunking', () => {
  const text =
    ': comment\r\nretry: 1500\r\n\r\n' +
    'id: 1-0\nevent: note\ndata: a\ndata:b\ndata\n\n' +
    'data: no type\rid: 2-0\r\r' +
    'id: bad\0id\ndata: keeps 2-0\n\n' +
    'event: nothing\n\n' + // no data: not dispatched, and the type does not leak
    'retry: x\ndata: last\n\n' +
    'data: incomplete';
  const expected = [
    ['note', 'a\nb\n', '1-0'],
    ['message', 'no type', '2-0'],
    ['message', 'keeps 2-0', '2-0'],
    ['message', 'last', '2-0'],
  ];
  for (const size of [1, 2, 3, 7, text.length]) {
    const got = [];
    const retries = [];
    const parser = new SseParser((...e) => got.push(e), (ms) => retries.push(ms));
    for (let i = 0; i < text.length; i += size) parser.feed(text.slice(i, i + size));
    assert.deepEqual(got, expected, `chunks of ${size}`);
    assert.deepEqual(retries, [1500]);
    assert.equal(parser.lastEventId, '2-0');
  }
});

test('a CR at the end of a chunk and an LF at the start of the next are one line end', () => {
  const got = [];
  const parser = new SseParser((type, data) => got.push(data));
  parser.feed('data: a\r');
  parser.feed('\ndata: b\r');
  parser.feed('\n\r');
  parser.feed('\n');
  assert.deepEqual(got, ['a\nb']);
});

test('topics, types and the resume id go in the URL; reconnects resume after the last id', async () => {
  const server = await scripted([
    stream('retry: 10\n\nid: 5-0\ndata: one\n\n'),
    stream('id: 6-0\ndata: two\n\n', { open: true }),
  ]);
  const { source, seen } = watch(server.url, {
    topics: ['a/b', 'c'],
    types: ['note', 'message'],
    lastEventId: '4-0',
    token: 'T',
  });
  await until(() => seen.events.length === 2, 'two events');
  assert.deepEqual(seen.events.map((e) => [e.data, e.id]), [['one', '5-0'], ['two', '6-0']]);
  const [first, second] = server.requests.map((r) => r.url.searchParams);
  assert.deepEqual(first.getAll('topic'), ['a/b', 'c']);
  assert.equal(first.get('type'), 'note,message');
  assert.equal(first.get('last_event_id'), '4-0');
  assert.equal(first.get('access_token'), 'T');
  assert.equal(second.get('last_event_id'), '5-0');
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].state, SsegateSource.CONNECTING);
  assert.equal(source.readyState, source.OPEN);
  assert.equal(source.lastEventId, '6-0');
  source.close();
  assert.equal(source.readyState, SsegateSource.CLOSED);
  server.close();
});

test('503 with Retry-After is retried no earlier than asked', async () => {
  const server = await scripted([
    status(503, { 'retry-after': '1' }),
    stream('data: ok\n\n', { open: true }),
  ]);
  const { source, seen } = watch(server.url);
  await until(() => seen.events.length === 1, 'the event after the retry');
  assert.equal(seen.errors[0].status, 503);
  assert.ok(seen.errors[0].retryIn >= 1000, `retryIn ${seen.errors[0].retryIn}`);
  const waited = server.requests[1].at - server.requests[0].at;
  assert.ok(waited >= 990, `reconnected after ${waited} ms`);
  source.close();
  server.close();
});

test('204 and other refusals close the source for good', async () => {
  for (const code of [204, 400, 403, 404]) {
    const server = await scripted([status(code)]);
    const { source, seen } = watch(server.url);
    await until(() => source.readyState === SsegateSource.CLOSED, `closed after ${code}`);
    assert.deepEqual(seen.errors, [{ status: code, retryIn: undefined, state: SsegateSource.CLOSED }]);
    assert.equal(server.requests.length, 1);
    server.close();
  }
});

test('ssegate.shutdown: reconnects after the hinted delay, resuming', async () => {
  const server = await scripted([
    stream('retry: 5000\n\nid: 7-0\ndata: before\n\nretry: 300\nevent: ssegate.shutdown\ndata: {"retry_ms":300}\n\n'),
    stream('id: 8-0\ndata: after\n\n', { open: true }),
  ]);
  const { source, seen } = watch(server.url);
  await until(() => seen.events.length === 3, 'the event after the restart');
  assert.deepEqual(seen.events.map((e) => e.type), ['message', 'ssegate.shutdown', 'message']);
  assert.equal(seen.errors[0].retryIn, 300);
  const waited = server.requests[1].at - server.requests[0].at;
  assert.ok(waited >= 290 && waited < 5000, `reconnected after ${waited} ms`);
  assert.equal(server.requests[1].url.searchParams.get('last_event_id'), '7-0');
  source.close();
  server.close();
});

test('ssegate.expired: reconnects at once with a token from token()', async () => {
  const server = await scripted([
    stream('retry: 5000\n\nid: 1-0\ndata: x\n\nevent: ssegate.expired\ndata: {}\n\n'),
    stream('', { open: true }),
  ]);
  let n = 0;
  const { source, seen } = watch(server.url, { token: async () => `token-${++n}` });
  await until(() => seen.opens === 2, 'the second connection');
  const tokens = server.requests.map((r) => r.url.searchParams.get('access_token'));
  assert.deepEqual(tokens, ['token-1', 'token-2']);
  assert.equal(seen.errors[0].retryIn, 0);
  source.close();
  server.close();
});

test('401: a token function gets one more try; a fixed token none', async () => {
  const server = await scripted([status(401)]);
  let n = 0;
  const renewing = watch(server.url, { token: () => `t${++n}` });
  await until(() => renewing.source.readyState === SsegateSource.CLOSED, 'closed');
  assert.deepEqual(server.requests.map((r) => r.url.searchParams.get('access_token')), ['t1', 't2']);
  const fixed = watch(server.url, { token: 'fixed' });
  await until(() => fixed.source.readyState === SsegateSource.CLOSED, 'closed');
  assert.equal(server.requests.length, 3);
  server.close();
});

test('backoff doubles from the server retry, with jitter, up to maxRetryDelay', async () => {
  const server = await scripted([stream('retry: 20\n\n'), status(500)]);
  const { source, seen } = watch(server.url, { maxRetryDelay: 100 });
  await until(() => seen.errors.length >= 7, 'seven failures');
  source.close();
  // After the stream ended: one step of 20; then failures 1, 2, 3… give 40, 80, 100 (cap).
  const steps = [20, 40, 80, 100, 100, 100, 100];
  seen.errors.slice(0, 7).forEach((e, i) => {
    assert.ok(e.retryIn >= steps[i] / 2 && e.retryIn <= steps[i], `attempt ${i}: ${e.retryIn} for ${steps[i]}`);
  });
  server.close();
});

test('a connection silent for heartbeatTimeout is dropped and resumed', async () => {
  const server = await scripted([stream('retry: 10\n\nid: 3-0\ndata: x\n\n', { open: true })]);
  const { source, seen } = watch(server.url, { heartbeatTimeout: 150 });
  await until(() => seen.opens === 2, 'the second connection');
  assert.equal(server.requests[1].url.searchParams.get('last_event_id'), '3-0');
  source.close();
  server.close();
});

test('reconnect(delay) drops the connection and comes back after delay; close() is final', async () => {
  const server = await scripted([stream('retry: 10\n\nid: 9-0\ndata: x\n\n', { open: true })]);
  const { source, seen } = watch(server.url);
  await until(() => seen.events.length === 1, 'the first event');
  source.reconnect(200);
  await until(() => seen.opens === 2, 'the second connection');
  const waited = server.requests[1].at - server.requests[0].at;
  assert.ok(waited >= 190, `reconnected after ${waited} ms`);
  source.close();
  source.reconnect(0);
  await new Promise((r) => setTimeout(r, 50)); // (nothing to wait for: checking nothing happens)
  assert.equal(server.requests.length, 2);
  assert.equal(source.readyState, SsegateSource.CLOSED);
  server.close();
});

test('an on… property replaces the previous one; null removes it', async () => {
  const server = await scripted([stream('data: one\n\ndata: two\n\n', { open: true })]);
  const source = new SsegateSource(server.url);
  const calls = [];
  source.onmessage = () => calls.push('old');
  source.onmessage = (e) => calls.push(e.data);
  source.addEventListener('message', () => calls.push('listener'));
  await until(() => calls.length === 4, 'both events');
  assert.deepEqual(calls, ['one', 'listener', 'two', 'listener']);
  assert.equal(typeof source.onmessage, 'function');
  source.onmessage = null;
  assert.equal(source.onmessage, null);
  source.close();
  server.close();
});
