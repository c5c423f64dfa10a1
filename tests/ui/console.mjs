// Drives Debian's Chromium through the delivery console, as a person would.
// Usage: node console.mjs <base URL> <admin token> <event id>; prints one JSON line.
import { chromium } from 'playwright-core';

const [base, token, eventId] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/ui/events`);
  const redirectedToLogin = page.url().endsWith('/ui/login');
  await page.fill('input[name=token]', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('table.events tbody tr');
  const rows = await page.locator('table.events tbody tr').count();
  await page.click(`a[href="/ui/events/${eventId}"]`);
  await page.waitForSelector('pre.payload');
  const payload = await page.textContent('pre.payload');
  const attempts = () => page.locator('table.attempts tbody tr').count();
  const before = await attempts();
  await page.click('button.retry');
  await page.waitForSelector('pre.payload');
  let after = await attempts();
  for (let i = 0; i < 50 && after <= before; i++) {
    await page.waitForTimeout(200);
    await page.reload();
    after = await attempts();
  }
  const html = await page.content();
  await page.goto(`${base}/ui/targets`);
  const targets = await page.locator('table.targets tbody tr').count();
  await page.click('button.test');
  await page.waitForSelector('table.targets');
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'hookline_session');
  console.log(JSON.stringify({ redirectedToLogin, rows, payload, before, after, html, targets,
    cookie: session && { httpOnly: session.httpOnly, sameSite: session.sameSite } }));
} finally {
  await browser.close();
}
