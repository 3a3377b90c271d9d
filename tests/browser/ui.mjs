// The web UI in a real browser: Debian's Chromium driven by playwright-core.
//
// Usage: node ui.mjs BASE_URL API_KEY SCREENSHOT_DIR
// (BATCHGATE_CHROMIUM: the browser, default /usr/bin/chromium). Run by
// crates/server/tests/api/clients.rs against a real server with keys on.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, key, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const step = (text) => console.log(`- ${text}`);

const browser = await chromium.launch({
  executablePath: process.env.BATCHGATE_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // 401 (before the key) and 422 (the invalid-parameter step) are expected answers.
    if (message.type() === "error" && !/status of (401|422)/.test(message.text())) {
      failures.push(`console error: ${message.text()}`);
    }
  });
  // Nothing may be loaded from anywhere but the server itself (works offline, no CDN).
  page.on("request", (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith("blob:") && !request.url().startsWith("data:")) {
      failures.push(`request to elsewhere: ${request.url()}`);
    }
  });

  step("keys are on: the page asks for one, keeps it, then shows the catalogue");
  await page.goto(base);
  await page.locator("#notice").getByText("Enter an API key").waitFor();
  await page.fill("#api-key", key);
  await page.click("#key-form button[type=submit]");
  await page.getByRole("link", { name: "Sensor analyzer" }).waitFor();
  await page.screenshot({ path: join(shots, "01-tools.png"), fullPage: true });
  const stored = await page.evaluate(() => localStorage.getItem("batchgate.key"));
  if (stored !== key) failures.push("the key is not kept in the browser");

  step("an invalid parameter is refused, with the failing field marked");
  await page.getByRole("link", { name: "Sensor analyzer" }).click();
  await page.click("#load-example");
  await page.fill("#param-window", "0");
  await page.click("#submit-job");
  await page.locator('[data-path="/parameters/window"].invalid').waitFor();
  await page.screenshot({ path: join(shots, "02-invalid.png"), fullPage: true });

  step("the demo tool through the form: submit, watch it finish, open the result");
  await page.click("#load-example");
  await page.click("#submit-job");
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  await page.locator('#job-state [data-state="succeeded"]').waitFor({ timeout: 30_000 });
  // The result is fetched after the final state is shown.
  await page.locator('#result table[data-output="insights"] tbody tr').nth(1).waitFor({ timeout: 10_000 })
    .catch(() => {});
  const rows = await page.locator('#result table[data-output="insights"] tbody tr').count();
  if (rows < 2) failures.push(`the result table has ${rows} rows`);
  await page.screenshot({ path: join(shots, "03-result.png"), fullPage: true });

  step("download an output");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click('#job-outputs button[data-output="insights"]'),
  ]);
  const saved = join(shots, "insights.csv");
  await download.saveAs(saved);
  const csv = readFileSync(saved, "utf8");
  if (!csv.startsWith("sensor,kind,name,value,at")) failures.push(`downloaded: ${csv.slice(0, 80)}`);
  if (download.suggestedFilename() !== "insights.csv") failures.push(`file name ${download.suggestedFilename()}`);

  step("a slow job: live progress, then cancel");
  await page.goto(`${base}/#/tools/analyzer@2`);
  await page.click("#load-example");
  await page.fill("#param-delay_seconds", "30");
  await page.click("#submit-job");
  await page.locator('#job-state [data-state="running"]').waitFor({ timeout: 15_000 });
  await page.waitForFunction(() => Number(document.getElementById("job-progress")?.value) > 0, null, { timeout: 15_000 });
  await page.screenshot({ path: join(shots, "04-running.png"), fullPage: true });
  await page.click("#cancel-job");
  await page.locator('#job-state [data-state="canceled"]').waitFor({ timeout: 15_000 });
  await page.screenshot({ path: join(shots, "05-canceled.png"), fullPage: true });

  step("the history, filtered, reached with the keyboard");
  await page.goto(`${base}/#/`);
  await page.getByRole("link", { name: "History" }).focus();
  await page.keyboard.press("Enter");
  await page.locator("#history tbody tr").first().waitFor();
  const all = await page.locator("#history tbody tr").count();
  await page.selectOption('#history-filters select[name="status"]', "canceled");
  await page.click('#history-filters button[type="submit"]');
  await page.waitForURL(/status=canceled/);
  // The page is re-rendered after the URL changes: wait for the filtered table.
  await page.waitForFunction(() => {
    const shown = [...document.querySelectorAll("#history tbody [data-state]")];
    return shown.length > 0 && shown.every((cell) => cell.dataset.state === "canceled");
  }, null, { timeout: 10_000 }).catch(() => {});
  const states = await page.locator("#history tbody [data-state]").allTextContents();
  if (all < 2) failures.push(`history shows ${all} jobs`);
  if (states.length !== 1 || states[0] !== "canceled") failures.push(`filtered history: ${states}`);
  await page.screenshot({ path: join(shots, "06-history.png"), fullPage: true });
} catch (error) {
  failures.push(String(error?.stack ?? error));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log(`ok; screenshots in ${shots}`);
