// The browser's own EventSource against ssegate: events arrive; when the server ends the
// stream (`close: true`), the browser reconnects by itself with Last-Event-ID and receives
// the events published meanwhile.
//
// node native.mjs ORIGIN ADMIN   (ORIGIN serves a blank page through ssegate)

import { publish, recordStreams, run } from './lib.mjs';

const [origin, admin] = process.argv.slice(2);
const topic = 'browser/native';

run(async (page) => {
  const streams = recordStreams(page);
  await page.goto(`${origin}/`);
  await page.evaluate((topic) => {
    window.seen = { got: [], errors: [], opens: 0 };
    const es = new EventSource(`/events?topic=${encodeURIComponent(topic)}`);
    es.onopen = () => { seen.opens += 1; };
    es.onmessage = (e) => seen.got.push({ data: e.data, id: e.lastEventId });
    es.onerror = () => seen.errors.push(es.readyState);
    window.es = es;
  }, topic);
  await page.waitForFunction(() => seen.opens === 1);

  const ids = await publish(admin, { topic, data: 'one' });
  // The server ends the stream after this one; the browser waits `retry:` (2 s here).
  ids.push(...(await publish(admin, { topic, data: 'two', close: true })));
  await page.waitForFunction(() => seen.got.length === 2 && seen.errors.length > 0);
  const requests_before_missed = streams.length;
  ids.push(...(await publish(admin, [{ topic, data: 'three' }, { topic, data: 'four' }])));
  const requests_after_missed = streams.length;

  await page.waitForFunction(() => seen.got.length === 4 && seen.opens === 2);
  const result = await page.evaluate(() => {
    es.close();
    return seen;
  });
  return { ids, ...result, streams: await streams.details(), requests_before_missed, requests_after_missed };
});
