// The `ssegate demo` page in Chromium: it renders live events from both topics, shows an
// event published with the printed curl line, and after its "drop" button resumes with the
// events published meanwhile. Screenshots go to SHOTS/demo.png and SHOTS/demo-resumed.png.
//
// node demo.mjs URL ADMIN SHOTS

import { join } from 'node:path';
import { publish, run } from './lib.mjs';

const [url, admin, shots] = process.argv.slice(2);
const text = 'Hello from the browser test';

run(async (page) => {
  await page.goto(url);
  await page.locator('#state[data-state="open"]').waitFor();
  await page.locator('#log li[data-type="metrics"]').first().waitFor();
  await page.locator('#log li[data-type="chat"]').first().waitFor();

  await publish(admin, { topic: 'demo/chat', event: 'chat', data: { user: 'test', text } });
  await page.locator('#chat li', { hasText: text }).waitFor();
  await page.screenshot({ path: join(shots, 'demo.png'), fullPage: true });

  await page.click('#drop');
  await page.locator('#state[data-state="reconnecting"]').waitFor();
  await page.locator('#state[data-state="open"]').waitFor();
  await page.locator('#log li.resumed').first().waitFor();
  await page.screenshot({ path: join(shots, 'demo-resumed.png'), fullPage: true });

  return page.evaluate(() => {
    const items = [...document.querySelectorAll('#log li[data-id]')];
    return {
      state: document.querySelector('#state').textContent,
      types: [...new Set(items.map((li) => li.dataset.type))].sort(),
      ids: items.map((li) => li.dataset.id),
      resumed: items.filter((li) => li.classList.contains('resumed')).length,
      reconnects: Number(document.querySelector('#reconnects').textContent),
      chat: [...document.querySelectorAll('#chat li')].map((li) => li.textContent),
      cpu: document.querySelector('#cpu').textContent,
      curl_hint: document.querySelector('pre').textContent,
    };
  });
});
