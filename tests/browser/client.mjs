// SsegateSource (/_ssegate/client.js) in Chromium across forced drops: the connection is
// cut under it (the page is reached through a relay the test can sever), events are
// published while it is away, and it resumes after the last id it saw: first within the
// history, then with more missed than the history holds, which brings `ssegate.gap`.
//
// node client.mjs ORIGIN ADMIN CONTROL
//   ORIGIN   the relay in front of ssegate (serves a blank page)
//   ADMIN    ssegate's internal listener
//   CONTROL  POST CONTROL/cut severs every relayed connection and refuses new ones until
//            POST CONTROL/restore

import { publish, recordStreams, run } from './lib.mjs';

const [origin, admin, control] = process.argv.slice(2);
const topic = 'browser/client';

async function relay(action) {
  const resp = await fetch(`${control}/${action}`, { method: 'POST' });
  if (!resp.ok) throw new Error(`${action}: ${resp.status}`);
}

const events = (...names) => names.map((data) => ({ topic, data }));

run(async (page) => {
  const streams = recordStreams(page);
  await page.goto(`${origin}/`);
  await page.evaluate(async (topic) => {
    const module = await import('/_ssegate/client.js');
    const { SsegateSource } = module;
    window.seen = {
      got: [],
      gaps: [],
      errors: [],
      opens: 0,
      global_is_export: window.SsegateSource === SsegateSource && module.default === SsegateSource,
    };
    const source = new SsegateSource('/events', { topics: [topic] });
    source.onopen = () => { seen.opens += 1; };
    source.onmessage = (e) => seen.got.push({ data: e.data, id: e.lastEventId });
    source.ongap = (e) => seen.gaps.push(JSON.parse(e.data));
    source.onerror = (e) => seen.errors.push({ ready_state: source.readyState, retry_in: e.retryIn });
    window.source = source;
  }, topic);
  await page.waitForFunction(() => seen.opens === 1 && source.readyState === source.OPEN);

  const ids = await publish(admin, events('a1'));
  await page.waitForFunction(() => seen.got.length === 1);

  // Drop 1: two events missed, both still in the history (3 events).
  await relay('cut');
  await page.waitForFunction(() => seen.errors.length === 1 && source.readyState === 0);
  ids.push(...(await publish(admin, events('a2', 'a3'))));
  await relay('restore');
  await page.waitForFunction(() => seen.opens === 2 && seen.got.length === 3);
  const gaps_after_first_drop = await page.evaluate(() => seen.gaps.length);

  // Drop 2: five missed, more than the history holds.
  const errors = await page.evaluate(() => seen.errors.length);
  await relay('cut');
  await page.waitForFunction((n) => seen.errors.length > n && source.readyState === 0, errors);
  ids.push(...(await publish(admin, events('b1', 'b2', 'b3', 'b4', 'b5'))));
  await relay('restore');
  await page.waitForFunction(() => seen.opens === 3 && seen.got.length === 6 && seen.gaps.length === 1);

  const result = await page.evaluate(() => {
    source.close();
    return { ...seen, ready_state_after_close: source.readyState, last_event_id: source.lastEventId };
  });
  return { ids, gaps_after_first_drop, ...result, streams: await streams.details() };
});
