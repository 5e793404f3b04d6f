// The `ssegate demo` page in Chromium: it renders live events from both topics, shows an
// event published with the printed curl line, and after its "drop" button resumes with the
// events published meanwhile; its legacy page goes live through derive and watch rules.
// Screenshots go to SHOTS/demo.png, SHOTS/demo-resumed.png and SHOTS/demo-legacy.png.
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

  // The "legacy" app: a note posted in one window appears in another (a derive rule), and
  // the job's progress arrives by itself (a watch rule). The app publishes nothing.
  const reader = await page.context().newPage();
  await reader.goto(`${url}legacy`);
  await reader.waitForFunction(() => document.querySelector('#notes li') !== null);
  await reader.waitForFunction(() => typeof htmx !== 'undefined');
  const writer = await page.context().newPage();
  await writer.goto(`${url}legacy`);
  await writer.fill('input[name=text]', 'A note from the browser test');
  await writer.click('form button');
  await reader.locator('#notes li', { hasText: 'A note from the browser test' }).waitFor();
  await writer.click('text=Start the job');
  await reader.locator('#job progress').waitFor();
  await reader.screenshot({ path: join(shots, 'demo-legacy.png'), fullPage: true });
  const legacy = {
    notes: await reader.$$eval('#notes li', (lis) => lis.map((li) => li.textContent)),
    job: await reader.locator('#job').textContent(),
  };
  await reader.close();
  await writer.close();

  const main = await page.evaluate(() => {
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
  return { ...main, legacy };
});
