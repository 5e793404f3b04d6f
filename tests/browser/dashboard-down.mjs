// The dashboard of an instance whose broker is Redis and Redis is down: the page still
// renders from its feed, and shows the broker as down. Screenshot: SHOTS/dashboard-broker-down.png.
//
// node dashboard-down.mjs ADMIN SHOTS

import { join } from 'node:path';
import { run } from './lib.mjs';

const [admin, shots] = process.argv.slice(2);

run(async (page) => {
  await page.goto(`${admin}/dashboard`);
  await page.locator('#live', { hasText: 'live' }).waitFor();
  await page.locator('#broker', { hasText: 'DOWN' }).waitFor();
  await page.screenshot({ path: join(shots, 'dashboard-broker-down.png'), fullPage: true });
  return page.evaluate(() => ({
    broker: document.querySelector('#broker').textContent,
    broker_class: document.querySelector('#broker').className,
    streams: document.querySelector('#streams').textContent,
  }));
});
