// A legacy app with no publishing code at all goes live through a `derive` rule: one page
// submits a form (htmx `hx-post`), and a second page's list, subscribed with htmx's SSE
// extension (`hx-trigger="sse:items.changed"`), refetches its fragment and shows the item.
//
// node htmx.mjs ORIGIN SHOTS   (ORIGIN is ssegate in front of the test's app; the
// reader's page ends in SHOTS/htmx.png)

import { join } from 'node:path';
import { run } from './lib.mjs';

const [origin, shots] = process.argv.slice(2);

run(async (reader) => {
  await reader.goto(`${origin}/`);
  // The list is loaded, and the SSE connection is open, before anything is posted.
  await reader.waitForFunction(() => document.querySelector('#list')?.dataset.loaded === '1');
  await reader.waitForFunction(() => window.sseOpen === true);

  const writer = await reader.context().newPage();
  await writer.goto(`${origin}/`);
  await writer.fill('input[name=name]', 'first from htmx');
  await writer.click('button');
  await reader.waitForFunction(() => document.querySelector('#list').textContent.includes('first from htmx'));

  await writer.fill('input[name=name]', 'second');
  await writer.click('button');
  await reader.waitForFunction(() => document.querySelector('#list').textContent.includes('second'));
  const items = await reader.$$eval('#list li', (lis) => lis.map((li) => li.textContent));
  await reader.screenshot({ path: join(shots, 'htmx.png') });
  return { items };
});
