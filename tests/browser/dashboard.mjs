// The internal listener's dashboard in Chromium: it renders from its own SSE feed, its
// numbers move when a stream opens and an event is published, and its tenants table sorts
// when a header is clicked. Screenshot: SHOTS/dashboard.png.
//
// node dashboard.mjs ADMIN PROXY SHOTS
//   ADMIN  ssegate's internal listener (serves /dashboard)
//   PROXY  ssegate's public listener (the stream this script opens)

import { join } from 'node:path';
import { publish, run } from './lib.mjs';

const [admin, proxy, shots] = process.argv.slice(2);
const topic = 'tenant/acme/questions';

const text = (page, sel) => page.locator(sel).textContent();

run(async (page) => {
  await page.goto(`${admin}/dashboard`);
  await page.locator('#live', { hasText: 'live' }).waitFor();
  await page.waitForFunction(() => document.querySelector('#streams').textContent === '0');
  const before = {
    streams: await text(page, '#streams'),
    published: await text(page, '#pub-total'),
    broker: await text(page, '#broker'),
  };

  // A subscriber outside the page: the dashboard must count it.
  const abort = new AbortController();
  const stream = await fetch(`${proxy}/events?topic=${topic}`, { signal: abort.signal });
  if (stream.status !== 200) throw new Error(`stream answered ${stream.status}`);
  const reader = stream.body.getReader();
  await page.waitForFunction(() => document.querySelector('#streams').textContent === '1');

  await publish(admin, [
    { topic, data: 'q1' },
    { topic: 'tenant/zeta/questions', data: 'q2' },
  ]);
  // Read until the event arrived, so the delivery has happened.
  let received = '';
  while (!received.includes('data: q1')) {
    const { value, done } = await reader.read();
    if (done) throw new Error('the stream ended');
    received += new TextDecoder().decode(value);
  }
  await page.waitForFunction(() => document.querySelector('#pub-total').textContent === '2 in all');
  await page.waitForFunction(() => document.querySelector('#del-total').textContent === '1 in all');
  await page.locator('#tenants tbody tr', { hasText: 'zeta' }).waitFor();

  const rows = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('#tenants tbody tr')].map((tr) =>
        [...tr.children].map((td) => td.textContent),
      ),
    );
  const byStreams = await rows();
  await page.click('#tenants th[data-key="tenant"]');
  const byName = await rows();
  await page.click('#tenants th[data-key="tenant"]');
  const byNameDesc = await rows();
  // The chart draws its three lines once it has two seconds of history.
  await page.waitForFunction(() => document.querySelectorAll('#chart path').length === 3);
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });

  const after = await page.evaluate(() => ({
    streams: document.querySelector('#streams').textContent,
    published: document.querySelector('#pub-total').textContent,
    delivered: document.querySelector('#del-total').textContent,
    topics: [...document.querySelectorAll('#topics .name')].map((n) => n.textContent),
    chart_paths: document.querySelectorAll('#chart path').length,
    live: document.querySelector('#live').textContent,
  }));
  abort.abort();
  return { before, after, by_streams: byStreams, by_name: byName, by_name_desc: byNameDesc };
});
