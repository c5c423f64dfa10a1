// The newcomer's first minutes in Debian's Chromium: follow the sign-in link standalone printed,
// look at the sources, send one a sample, watch it delivered, read why a target is held.
// Usage: node newcomer.mjs <sign-in link> <screenshot directory>; prints one JSON line.
import { chromium } from 'playwright-core';

const [link, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  await page.goto(link);
  const landedOn = new URL(page.url()).pathname;
  await shot('1-signed-in');
  await page.click('a[href="/ui/sources"]');
  await page.waitForSelector('table.sources');
  const sources = await page.locator('table.sources tbody tr').allTextContents();
  await shot('2-sources');
  const stripe = page.locator('table.sources tbody tr', { hasText: 'stripe' }).first();
  await stripe.locator('select[name=type]').selectOption('invoice.paid');
  await stripe.locator('button.send-sample').click();
  await page.waitForSelector('svg.timeline');
  const eventPage = new URL(page.url()).pathname;
  await shot('3-sample-event');
  // Delivered: the local subscription's bars count it (the page is read again until they do).
  let delivered = '';
  let held = '';
  for (let i = 0; i < 100; i++) {
    await page.goto(page.url().replace(/\/ui\/.*$/, '/ui/targets'));
    const row = page.locator('table.targets tbody tr', { hasText: 'local-sink' });
    delivered = await row.locator('svg.deliveries').getAttribute('aria-label');
    held = await page.locator('table.targets tbody tr', { hasText: 'local-held' }).locator('td.held').textContent();
    if (delivered.includes('1 succeeded')) break;
    await page.waitForTimeout(200);
  }
  await shot('4-targets');
  await page.click('a[href="/ui/overview"]');
  await page.waitForSelector('table.overview');
  const overview = await page.locator('table.overview svg').first().getAttribute('aria-label');
  await shot('5-overview');
  console.log(JSON.stringify({ landedOn, sources, eventPage, delivered, held, overview }));
} finally {
  await browser.close();
}
