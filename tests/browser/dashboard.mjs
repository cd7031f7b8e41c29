// Drives the dashboard in Debian's Chromium (playwright-core, no downloaded browser).
//
//   node dashboard.mjs URL SCREENSHOT NEW_PIPELINE
//
// Opens URL, waits until a host and a pipeline show, prints READY, then waits (without
// reloading) until NEW_PIPELINE appears with its `activated` deploy event and a non-zero
// results/s, takes a full-page screenshot and prints DONE. Exit status 1 on a timeout (the
// screenshot is taken anyway, to see why).
import { chromium } from "playwright-core";

const [url, screenshot, expected] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let status = 0;
const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
try {
  await page.goto(url);
  await page.evaluate(() => { window.__loadedOnce = "yes"; });
  await page.waitForSelector("tr[data-host]", { timeout: 30000 });
  await page.waitForSelector("tr[data-pipeline]", { timeout: 30000 });
  console.log("READY");
  const started = Date.now();
  await page.waitForSelector(`tr[data-pipeline="${expected}"]`, { timeout: 60000 });
  await page.waitForSelector(`li[data-event="activated"][data-what="${expected}"]`, { timeout: 30000 });
  await page.waitForFunction(
    (name) => {
      const cell = document.querySelector(`tr[data-pipeline="${name}"] td[data-field="results_per_s"]`);
      return cell && Number(cell.textContent) > 0;
    },
    expected,
    { timeout: 30000 },
  );
  const reloaded = await page.evaluate(() => window.__loadedOnce !== "yes");
  if (reloaded) throw new Error("the page was reloaded");
  console.log(`DONE ${Date.now() - started}`);
} catch (e) {
  console.log(`FAILED ${e.message}`);
  status = 1;
}
await page.screenshot({ path: screenshot, fullPage: true });
await browser.close();
process.exit(status);
