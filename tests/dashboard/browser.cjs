// The dashboard in a real browser (Debian's chromium, headless, driven by
// playwright-core). Run by tests/it/dashboard.rs, which starts the server,
// publishes over MQTT when this script says READY, and reads its verdict.
// Env: BASE (http://host:port), USER, PASSWORD, ARTIFACTS (directory),
// CHROMIUM (executable).
"use strict";
const { chromium, request } = require("playwright-core");
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const { BASE, USER, PASSWORD, ARTIFACTS, CHROMIUM } = process.env;
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, name + ".png"), fullPage: true });
function check(cond, msg) { if (!cond) throw new Error("check failed: " + msg); }

(async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  try {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const csp = [];
    page.on("console", (m) => { if (/Content.Security.Policy|Refused/.test(m.text())) csp.push(m.text()); });
    page.on("pageerror", (e) => console.log("PAGE ERROR " + e.message));

    // 1. A wrong password is refused, on the login page.
    await page.goto(BASE + "/");
    check(page.url().endsWith("/login"), "no session: redirected to the login page, at " + page.url());
    await page.fill("#user", USER);
    await page.fill("#password", "not the password at all");
    const [refused] = await Promise.all([page.waitForNavigation(), page.click("#login-button")]);
    check(refused.status() === 401, "wrong password answered " + refused.status());
    await page.waitForSelector("#login-error");
    await shot(page, "01-login-refused");

    // 2. The right one opens the live view.
    await page.fill("#user", USER);
    await page.fill("#password", PASSWORD);
    await Promise.all([page.waitForURL(BASE + "/"), page.click("#login-button")]);
    await page.waitForSelector('[data-device="m1"]');
    await shot(page, "02-live");

    // 3. A reading published over MQTT shows within 2 s.
    console.log("READY");
    const line = await nextLine();
    const value = line.split(" ")[1];
    const t0 = Date.now();
    await page.waitForFunction(
      (v) => { const e = document.querySelector('[data-device="m1"] [data-ch="pa_v"]'); return e && e.textContent === v; },
      value, { timeout: 2000, polling: 20 });
    console.log("LIVE_MS " + (Date.now() - t0));
    await shot(page, "03-live-updated");

    // 4. A month of history draws.
    await page.goto(BASE + "/history");
    await page.waitForSelector("#h-devices option");
    const t1 = Date.now();
    await page.click("#range-month");
    await page.waitForFunction(() => Number(document.getElementById("h-chart").dataset.drawn || 0) > 100, null, { timeout: 10000 });
    console.log("HISTORY_MS " + (Date.now() - t1));
    console.log("HISTORY_INFO " + (await page.textContent("#h-info")));
    // The daily kWh bars of the month (about 30 days of the imported power).
    await page.waitForFunction(() => Number(document.getElementById("h-kwh").dataset.days || 0) >= 28, null, { timeout: 10000 });
    await shot(page, "04-history-month");

    // 5. CSV download of the range.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click('[id="dl-csv-m1"]')]);
    const csvPath = path.join(ARTIFACTS, "m1.csv");
    await download.saveAs(csvPath);
    const csv = fs.readFileSync(csvPath, "utf8").trim().split("\n");
    check(csv[0].startsWith("time,device,"), "CSV header: " + csv[0]);
    console.log("CSV_ROWS " + (csv.length - 1));
    const [pq] = await Promise.all([page.waitForEvent("download"), page.click('[id="dl-parquet-m1"]')]);
    await pq.saveAs(path.join(ARTIFACTS, "m1.parquet"));

    // 6. Fleet.
    await page.goto(BASE + "/fleet");
    await page.waitForSelector('#fleet tr[data-device="m1"]');
    await shot(page, "05-fleet");

    // 7. Logout ends the session on the server: the old cookie is refused.
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "wattson_session");
    check(session && session.httpOnly && session.sameSite === "Strict", "session cookie flags " + JSON.stringify(session));
    await page.goto(BASE + "/");
    await Promise.all([page.waitForURL(BASE + "/login"), page.click("#logout")]);
    await shot(page, "06-logged-out");
    const replay = await request.newContext({ extraHTTPHeaders: { Cookie: "wattson_session=" + session.value } });
    const api = await replay.get(BASE + "/api/session");
    check(api.status() === 401, "old cookie on /api/session answered " + api.status());
    const home = await replay.get(BASE + "/", { maxRedirects: 0 });
    check(home.status() === 303 && home.headers()["location"] === "/login", "old cookie on / answered " + home.status());
    check(csp.length === 0, "CSP violations: " + csp.join("; "));
    console.log("OK");
  } finally {
    await browser.close();
    lines.close();
  }
})().catch((e) => { console.log("FAIL " + (e.stack || e)); process.exit(1); });
