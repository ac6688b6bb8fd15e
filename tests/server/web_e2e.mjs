// End-to-end check of the web page in headless Chromium (driven by playwright-core): upload a document on
// the Extraction tab, wait for the fields, check their boxes lie on the page image, download the JSON,
// open the Benchmarks and Custom analysis tabs, and take a screenshot. Prints one JSON summary on stdout.
//
//   node web_e2e.mjs URL DOCUMENT SCREENSHOT DOWNLOAD_DIR API_KEY
// Environment: PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (the browser binary).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");
const [url, documentPath, screenshotPath, downloadDir, apiKey] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const summary = { errors: [], failed_loads: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1100 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on("pageerror", (e) => summary.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    // Failed fetches are reported by status (some are intended: the 503 of /analyze without a model).
    if (m.text().startsWith("Failed to load resource")) summary.failed_loads.push(m.text());
    else summary.errors.push(m.text());
  });
  await page.goto(url, { waitUntil: "load" });
  summary.title = await page.title();
  await page.fill("#api-key", apiKey);
  await page.dispatchEvent("#api-key", "change");
  await page.waitForSelector("#health.ok", { timeout: 15000 });
  summary.health = await page.textContent("#health");

  // Extraction.
  await page.setInputFiles("#extract-file", documentPath);
  await page.click("#extract-run");
  await page.waitForSelector("tr.field", { timeout: 180000 });
  await page.waitForFunction(() => document.getElementById("page-image").complete);
  summary.document_type = (await page.textContent("#doc-type")).trim();
  summary.status = (await page.textContent("#extract-status")).trim();
  summary.rows = await page.$$eval("tr.field", (rows) => rows.map((r) => ({
    field: r.dataset.field,
    section: r.dataset.section,
    label: r.querySelector(".label").textContent,
    detail: r.querySelector(".detail").textContent,
  })));
  const geometry = await page.evaluate(() => {
    const img = document.getElementById("page-image").getBoundingClientRect();
    const els = [...document.querySelectorAll(".box")];
    const boxes = els.map((b) => b.getBoundingClientRect());
    const inside = boxes.filter((b) => b.left >= img.left - 1 && b.top >= img.top - 1 &&
      b.right <= img.right + 1 && b.bottom <= img.bottom + 1 && b.width > 0 && b.height > 0).length;
    // Each box as fractions of the drawn image, to compare with the extraction's page-pixel boxes.
    const placed = els.map((e, i) => ({ field: e.dataset.field, rel: [
      (boxes[i].left - img.left) / img.width, (boxes[i].top - img.top) / img.height,
      (boxes[i].right - img.left) / img.width, (boxes[i].bottom - img.top) / img.height] }));
    return { image: { width: img.width, height: img.height }, boxes: boxes.length, inside, placed };
  });
  Object.assign(summary, geometry);
  // Hovering a row highlights its box.
  const firstWithBox = await page.$$eval("tr.field", (rows) => {
    const r = rows.find((row) => document.querySelector(`.box[data-field="${row.dataset.field}"]`));
    return r ? r.dataset.field : null;
  });
  if (firstWithBox !== null) {
    await page.hover(`tr.field[data-field="${firstWithBox}"]`);
    summary.highlighted = await page.$$eval(".box.active", (b) => b.length);
  }
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download-json")]);
  summary.download_json = path.join(downloadDir, download.suggestedFilename());
  await download.saveAs(summary.download_json);
  const [fhir] = await Promise.all([page.waitForEvent("download"), page.click("#download-fhir")]);
  summary.download_fhir = path.join(downloadDir, fhir.suggestedFilename());
  await fhir.saveAs(summary.download_fhir);
  await page.screenshot({ path: screenshotPath, fullPage: true });

  // Benchmarks.
  await page.click("#tab-bench");
  await page.waitForSelector("details.bench", { timeout: 15000 });
  summary.benchmarks = await page.$$eval("details.bench", (d) => d.map((x) => x.dataset.name));

  // Custom analysis without a model: the server's 503 message is shown.
  await page.click("#tab-analyze");
  await page.setInputFiles("#analyze-file", documentPath);
  await page.fill("#analyze-prompt", "Which tests are abnormal?");
  await page.click("#analyze-run");
  await page.waitForFunction(() => document.getElementById("analyze-status").classList.contains("error") ||
    !document.getElementById("analyze-answer").hidden, null, { timeout: 60000 });
  summary.analyze_status = (await page.textContent("#analyze-status")).trim();
} catch (e) {
  summary.errors.push(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(summary.errors.length ? 1 : 0);
