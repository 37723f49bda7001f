// End-to-end check of the billing developer console at ${CONSOLE_URL}/console, in headless
// Chromium through playwright-core. It runs against live services that the harness started and
// seeded; every number it checks is read from the REST API with the same token, never assumed.
//
//   CONSOLE_URL=… CHROMIUM=/usr/bin/chromium JWT_SECRET=… USER_ID=… \
//   WEBHOOK_URL=… WEBHOOK_SECRET=… [SCREENSHOT=out.png] node console.test.mjs
//
// Prints "ok N - …" per passed check ("not ok N - …" and the reason otherwise), then
// "N passed, N failed"; exits non-zero when any check failed.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
}

const BASE = required("CONSOLE_URL").replace(/\/+$/, "");
const ORIGIN = new URL(BASE).origin;
const CHROMIUM = required("CHROMIUM");
const JWT_SECRET = required("JWT_SECRET");
const USER_ID = required("USER_ID");
const WEBHOOK_URL = required("WEBHOOK_URL");
const WEBHOOK_SECRET = required("WEBHOOK_SECRET");
const SCREENSHOT = process.env.SCREENSHOT || "";

const WAIT_MS = 15000;
const TOKEN_KEY = "billing-console-token";
const RECHARGE_UNITS = "12.5";
const RECHARGE_MICROS = 12500000n;

// --- tokens -----------------------------------------------------------------------------------

function mintToken(sub, exp) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp })}`;
  const signature = crypto.createHmac("sha256", JWT_SECRET).update(signed).digest("base64url");
  return `${signed}.${signature}`;
}

const now = Math.floor(Date.now() / 1000);
const TOKEN = mintToken(USER_ID, now + 3600);
const EXPIRED_TOKEN = mintToken(USER_ID, now - 60);

// --- money, independently of the page ----------------------------------------------------------

/** Micros as "<CUR> units.cc", rounded half up on the magnitude, with BigInt only. */
function money(micros, currency) {
  const value = BigInt(micros);
  const magnitude = value < 0n ? -value : value;
  const cents = (magnitude + 5000n) / 10000n;
  const sign = value < 0n && cents > 0n ? "-" : "";
  return `${currency} ${sign}${cents / 100n}.${String(cents % 100n).padStart(2, "0")}`;
}

assert.equal(money(1234567, "CNY"), "CNY 1.23");
assert.equal(money(1235000, "CNY"), "CNY 1.24");
assert.equal(money(-1000000, "CNY"), "CNY -1.00");
assert.equal(money(0, "CNY"), "CNY 0.00");
assert.equal(money(4999, "CNY"), "CNY 0.00");
assert.equal(money(5000, "CNY"), "CNY 0.01");

function addDays(key, days) {
  const [y, m, d] = key.split("-").map(Number);
  const at = new Date(Date.UTC(2000, 0, 1));
  at.setUTCFullYear(y, m - 1, d + days);
  return at.toISOString().slice(0, 10);
}

// --- the REST API and the webhook ------------------------------------------------------------

async function apiGet(path, token = TOKEN) {
  const response = await fetch(`${BASE}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  const text = await response.text();
  assert.equal(response.status, 200, `GET ${path} answered ${response.status}: ${text}`);
  return path.includes("/records/export") ? text : JSON.parse(text);
}

async function apiPatch(path, body) {
  const response = await fetch(`${BASE}${path}`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `PATCH ${path} answered ${response.status}: ${text}`);
  return JSON.parse(text);
}

async function payOrder(orderNo, amountMicros) {
  const body = JSON.stringify({
    order_no: orderNo,
    provider_txn_id: `txn-${crypto.randomUUID()}`,
    paid_amount_micros: amountMicros,
    success: true,
  });
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = crypto.createHmac("sha256", WEBHOOK_SECRET).update(`${timestamp}.${body}`).digest("hex");
  const response = await fetch(WEBHOOK_URL, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "X-Billing-Timestamp": timestamp,
      "X-Billing-Signature": `sha256=${signature}`,
    },
    body,
  });
  const text = await response.text();
  assert.equal(response.status, 200, `the webhook answered ${response.status}: ${text}`);
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Calls `read` until `done(value)` or the deadline; returns the last value. */
async function pollApi(read, done, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let value = await read();
  while (!done(value) && Date.now() < deadline) {
    await pause(250);
    value = await read();
  }
  return value;
}

// --- page helpers -----------------------------------------------------------------------------

function watch(page, errors, foreign, posts) {
  page.on("console", (message) => {
    if (message.type() === "error") {
      const where = message.location() && message.location().url;
      errors.push(`console error: ${message.text()}${where ? ` (${where})` : ""}`);
    }
  });
  page.on("pageerror", (error) => errors.push(`page error: ${error.message}`));
  page.on("request", (request) => {
    const url = request.url();
    if (/^(data|blob|about):/.test(url)) return;
    let parsed = null;
    try {
      parsed = new URL(url);
    } catch (_) {
      // unparsable: counted as foreign
    }
    if (!parsed || parsed.origin !== ORIGIN) {
      foreign.push(`${request.method()} ${url}`);
      return;
    }
    if (posts && request.method() === "POST" && parsed.pathname === "/api/v1/billing/recharge") posts.push(url);
  });
}

async function textOf(page, selector) {
  return page.evaluate((s) => {
    const element = document.querySelector(s);
    return element ? element.textContent.trim() : null;
  }, selector);
}

/** Waits until `selector`'s text is `expected`, then asserts it (so a failure shows the text). */
async function expectText(page, selector, expected, what, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(
      ([s, e]) => {
        const element = document.querySelector(s);
        return Boolean(element) && element.textContent.trim() === e;
      },
      [selector, expected],
      { timeout }
    );
  } catch (_) {
    // Reported by the assertion below.
  }
  assert.equal(await textOf(page, selector), expected, `${what} (${selector})`);
}

const ROWS = "#records tbody tr[data-record-id]";

async function rowIds(page) {
  return page.$$eval(ROWS, (rows) => rows.map((row) => row.getAttribute("data-record-id")));
}

async function expectRowIds(page, expected, what) {
  try {
    await page.waitForFunction(
      ([selector, ids]) => {
        const shown = Array.from(document.querySelectorAll(selector), (row) => row.getAttribute("data-record-id"));
        return shown.length === ids.length && shown.every((id, i) => id === ids[i]);
      },
      [ROWS, expected],
      { timeout: WAIT_MS }
    );
  } catch (_) {
    // Reported by the assertion below.
  }
  assert.deepEqual(await rowIds(page), expected, `records table: ${what}`);
}

async function expectVisible(page, selector, visible, what) {
  try {
    await page.waitForSelector(selector, { state: visible ? "visible" : "hidden", timeout: WAIT_MS });
  } catch (_) {
    // Reported by the assertion below.
  }
  assert.equal(await page.isVisible(selector), visible, `${what}: ${selector} should be ${visible ? "visible" : "hidden"}`);
}

// --- the checks -------------------------------------------------------------------------------

let passed = 0;
let failed = 0;

async function check(number, name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok ${number} - ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`not ok ${number} - ${name}`);
    const text = String((error && error.stack) || error);
    console.log(text.split("\n").map((line) => `    ${line}`).join("\n"));
  }
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const pageErrors = [];
  const foreign = [];
  const rechargePosts = [];
  watch(page, pageErrors, foreign, rechargePosts);
  let currency = "";
  let paidOrderNo = null;

  await check(1, "the page loads with a token: balance, available and free quota as the API says; fragment gone", async () => {
    await page.goto(`${BASE}/console#token=${TOKEN}`);
    const account = await apiGet("/api/v1/billing/account");
    currency = account.currency;
    assert.ok(currency, "the account has a currency");
    await expectText(page, "#balance", money(account.balance_micros, currency), "balance");
    await expectText(page, "#available", money(account.available_micros, currency), "available");
    const quota = account.free_quota;
    await expectText(page, "#free-text", `${money(quota.used_micros, currency)} / ${money(quota.granted_micros, currency)}`, "free quota used / granted");
    await expectText(page, "#user-id", account.user_id, "user id in the header");
    const bar = await page.$eval("#free-bar", (element) => ({
      role: element.getAttribute("role"),
      value: element.getAttribute("aria-valuenow"),
    }));
    assert.equal(bar.role, "progressbar", "free-bar role");
    const exact = Number(quota.granted_micros) > 0 ? (Number(quota.used_micros) * 100) / Number(quota.granted_micros) : 0;
    assert.ok(Math.abs(Number(bar.value) - Math.min(100, exact)) <= 1, `free-bar aria-valuenow ${bar.value}, expected about ${exact}`);
    assert.ok(((await textOf(page, "#free-resets")) || "").length > 0, "the reset date is shown");
    // As balance_low: at or below the user's threshold (the default one, not set yet).
    const alerts = await apiGet("/api/v1/billing/alerts");
    const low = BigInt(account.balance_micros) <= BigInt(alerts.low_balance_threshold_micros);
    await expectVisible(page, "#low-balance", low, "low-balance warning");
    if (low) assert.match((await textOf(page, "#low-balance")) || "", /low/i, "low-balance text");
    await page.waitForFunction(() => location.hash === "");
    assert.ok(!page.url().includes("#"), `the fragment is still in the URL: ${page.url()}`);
    assert.ok(!page.url().includes(TOKEN), "the token is still in the URL");
  });

  if (SCREENSHOT) {
    try {
      await page.waitForSelector(ROWS, { timeout: WAIT_MS });
      await page.waitForSelector("#usage-chart", { timeout: WAIT_MS });
      await page.waitForSelector("#top-apis tbody tr", { timeout: WAIT_MS });
    } catch (_) {
      // Take the picture of whatever is there.
    }
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`# screenshot saved to ${SCREENSHOT}`);
  }

  await check(2, "records: first page, load more page by page, load-more hidden at the end", async () => {
    const first = await apiGet("/api/v1/billing/records?limit=20");
    assert.ok(first.records.length > 0, "the API has records for the seeded user");
    let expected = first.records.map((record) => record.record_id);
    await expectRowIds(page, expected, "the first 20 records");
    const cells = await page.$$eval(ROWS, (rows) =>
      rows.map((row) => Array.from(row.cells).slice(2, 6).map((cell) => cell.textContent.trim()))
    );
    cells.forEach((shown, i) => {
      const record = first.records[i];
      const want = [record.amount_micros, record.free_micros, record.balance_micros, record.balance_after_micros].map((micros) =>
        money(micros, currency)
      );
      assert.deepEqual(shown, want, `amount, free, balance and balance-after of record ${record.record_id}`);
    });
    assert.ok(first.next_cursor, "the seeded user has more than 20 records, so the API gives a next_cursor");
    let cursor = first.next_cursor;
    for (let pageNo = 2; cursor; pageNo += 1) {
      assert.ok(pageNo < 100, "too many pages");
      await expectVisible(page, "#load-more", true, `load-more before page ${pageNo}`);
      await page.click("#load-more");
      const next = await apiGet(`/api/v1/billing/records?limit=20&cursor=${encodeURIComponent(cursor)}`);
      expected = expected.concat(next.records.map((record) => record.record_id));
      await expectRowIds(page, expected, `after loading page ${pageNo}`);
      cursor = next.next_cursor;
    }
    await expectVisible(page, "#load-more", false, "load-more once the API's next_cursor is null");
  });

  await check(3, "filter type=recharge shows the API's recharge records; the CSV download has the same filter", async () => {
    const wanted = await apiGet("/api/v1/billing/records?limit=20&type=recharge");
    assert.ok(wanted.records.length > 0, "the seeded user has a recharge record");
    assert.ok(wanted.records.every((record) => record.type === "recharge"), "the API's filtered records are recharges");
    await page.selectOption("#filter-type", "recharge");
    await page.click("#filter-apply");
    await expectRowIds(page, wanted.records.map((record) => record.record_id), "type=recharge");
    const types = await page.$$eval(ROWS, (rows) => rows.map((row) => row.cells[1].textContent.trim()));
    assert.ok(types.every((type) => type === "recharge"), `type column after filtering: ${types.join(", ")}`);
    await expectVisible(page, "#load-more", Boolean(wanted.next_cursor), "load-more for type=recharge");

    const [download] = await Promise.all([page.waitForEvent("download", { timeout: WAIT_MS }), page.click("#export-csv")]);
    assert.equal(download.suggestedFilename(), "records.csv", "download file name");
    const file = await download.path();
    assert.ok(file, `the download failed: ${await download.failure()}`);
    const csv = await readFile(file, "utf8");
    assert.equal(csv, await apiGet("/api/v1/billing/records/export?type=recharge"), "the CSV equals the API's export with type=recharge");

    // Back to every type for the next checks.
    await page.selectOption("#filter-type", "");
    await page.click("#filter-apply");
    const all = await apiGet("/api/v1/billing/records?limit=20");
    await expectRowIds(page, all.records.map((record) => record.record_id), "all types again");
  });

  await check(4, "usage chart has bars for today; top APIs in the order of the API's amounts", async () => {
    await page.waitForSelector("#usage-chart");
    const chart = await page.$eval("#usage-chart", (element) => ({
      tag: element.tagName.toLowerCase(),
      from: element.getAttribute("data-from"),
      to: element.getAttribute("data-to"),
    }));
    assert.equal(chart.tag, "svg", "usage-chart is an SVG");
    assert.ok(chart.from && chart.to, "usage-chart tells its window (data-from, data-to)");
    const range = `from=${chart.from}&to=${chart.to}`;
    const byDay = await apiGet(`/api/v1/billing/usage?${range}&group_by=day`);
    const today = addDays(chart.to, -1);
    assert.ok(
      byDay.buckets.some((bucket) => bucket.key === today && BigInt(bucket.amount_micros) > 0n),
      `the chart's last day ${today} should be today in the billing zone, with charges; the API's days: ${byDay.buckets.map((b) => b.key).join(", ")}`
    );
    for (const bucket of byDay.buckets) {
      if (BigInt(bucket.free_micros) + BigInt(bucket.balance_micros) === 0n) continue;
      const bars = await page.$$eval(`#usage-chart rect[data-day="${bucket.key}"]`, (rects) => rects.length);
      assert.ok(bars > 0, `the chart has no bar (rect) for ${bucket.key}`);
    }
    const labels = await page.$$eval("#usage-chart text", (texts) => texts.map((t) => t.textContent));
    assert.ok(labels.includes(today.slice(5)), `the chart labels today as ${today.slice(5)}: ${labels.join(" ")}`);

    const byApi = await apiGet(`/api/v1/billing/usage?${range}&group_by=api`);
    const top = byApi.buckets
      .slice()
      .sort((a, b) => {
        const diff = BigInt(b.amount_micros) - BigInt(a.amount_micros);
        return diff > 0n ? 1 : diff < 0n ? -1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      })
      .slice(0, 5);
    assert.ok(top.length > 0, "the usage API lists APIs for the seeded user");
    const rowsSelector = "#top-apis tbody tr";
    try {
      await page.waitForFunction(
        ([selector, n]) => document.querySelectorAll(selector).length === n && !document.querySelector("#top-apis-empty"),
        [rowsSelector, top.length],
        { timeout: WAIT_MS }
      );
    } catch (_) {
      // Reported below.
    }
    const shown = await page.$$eval(rowsSelector, (rows) => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent.trim())));
    assert.deepEqual(
      shown.map((cells) => [cells[0], cells[2]]),
      top.map((bucket) => [bucket.key, money(bucket.amount_micros, currency)]),
      "top-apis rows (API, amount)"
    );
    assert.deepEqual(shown.map((cells) => cells[1].replace(/\D/g, "")), top.map((bucket) => String(bucket.calls)), "top-apis calls");
  });

  await check(5, `recharge ${RECHARGE_UNITS}: PENDING, paid by the webhook, then PAID and the new balance`, async () => {
    const before = await apiGet("/api/v1/billing/account");
    await page.fill("#recharge-amount", RECHARGE_UNITS);
    await page.click("#recharge-submit");
    await page.waitForFunction(() => {
      const element = document.querySelector("#order-no");
      return Boolean(element) && element.textContent.trim() !== "";
    });
    const orderNo = await textOf(page, "#order-no");
    await expectText(page, "#order-status", "PENDING", "order status before payment");
    const order = await apiGet(`/api/v1/billing/recharge/orders/${encodeURIComponent(orderNo)}`);
    assert.equal(BigInt(order.amount_micros), RECHARGE_MICROS, "the order's amount");
    assert.equal(order.status, "PENDING", "the API's order status before payment");
    await payOrder(orderNo, order.amount_micros);
    paidOrderNo = orderNo;
    await expectText(page, "#order-status", "PAID", "order status after payment", WAIT_MS);
    const expected = BigInt(before.balance_micros) + RECHARGE_MICROS;
    const after = await pollApi(
      () => apiGet(`/api/v1/billing/account?min_version=${before.version + 1}`),
      (account) => BigInt(account.balance_micros) === expected
    );
    assert.equal(BigInt(after.balance_micros), expected, "the API's balance after the payment (old + 12.5 units)");
    await expectText(page, "#balance", money(expected, currency), "balance on the page after the payment", WAIT_MS);
  });

  await check(6, "invalid recharge amounts show recharge-error and create no order", async () => {
    const listOrders = () => apiGet("/api/v1/billing/recharge/orders?limit=100");
    // The list is the read model: let it catch up with the order of check 5 first.
    const baseline = paidOrderNo
      ? await pollApi(listOrders, (list) => list.orders.some((o) => o.order_no === paidOrderNo))
      : await listOrders();
    const postsBefore = rechargePosts.length;
    const orderNoBefore = await textOf(page, "#order-no");
    for (const input of ["-1", "1.1234567", "0", "abc", "1000000.000001"]) {
      await page.fill("#recharge-amount", input);
      await page.click("#recharge-submit");
      await expectVisible(page, "#recharge-error", true, `recharge-error for "${input}"`);
      assert.ok(((await textOf(page, "#recharge-error")) || "").length > 0, `recharge-error has a message for "${input}"`);
    }
    assert.equal(rechargePosts.length, postsBefore, "the page sent a recharge request for an invalid amount");
    assert.equal(await textOf(page, "#order-no"), orderNoBefore, "the shown order changed");
    const after = await listOrders();
    assert.equal(after.orders.length, baseline.orders.length, "the number of orders changed");
    assert.equal(after.orders[0] && after.orders[0].order_no, baseline.orders[0] && baseline.orders[0].order_no, "the newest order changed");
  });

  const expiredErrors = [];
  await check(9, "the low-balance warning follows the user's own alert threshold, at or below it", async () => {
    const account = await apiGet("/api/v1/billing/account");
    const balance = BigInt(account.balance_micros);
    for (const [threshold, low] of [[balance, true], [balance - 1n, false], [balance + 1000000n, true]]) {
      await apiPatch("/api/v1/billing/alerts", { low_balance_threshold_micros: Number(threshold) });
      await page.reload();
      await expectText(page, "#balance", money(account.balance_micros, currency), "balance after reload");
      await expectVisible(page, "#low-balance", low, `low-balance warning at threshold ${threshold}`);
      if (low) {
        const text = (await textOf(page, "#low-balance")) || "";
        assert.ok(text.includes(money(threshold, currency)), `the warning names the threshold: ${text}`);
      }
    }
    // The default again, so the screenshot and the checks after this one see the usual page.
    await apiPatch("/api/v1/billing/alerts", { low_balance_threshold_micros: 1000000 });
  });

  await check(7, "an expired token shows the token form; a valid token pasted there shows the wallet", async () => {
    const fresh = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const other = await fresh.newPage();
      other.setDefaultTimeout(WAIT_MS);
      watch(other, expiredErrors, foreign, null);
      await other.goto(`${BASE}/console#token=${EXPIRED_TOKEN}`);
      await expectVisible(other, "#token-form", true, "token form for an expired token");
      await expectVisible(other, "#token-message", true, "token message for an expired token");
      try {
        await other.waitForFunction(() => /expired/i.test((document.querySelector("#token-message") || {}).textContent || ""));
      } catch (_) {
        // Reported below.
      }
      assert.match((await textOf(other, "#token-message")) || "", /invalid or expired/i, "token-message text");
      assert.equal(await other.isVisible("#wallet"), false, "the wallet is hidden while the token is refused");
      assert.equal(await other.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY), null, "the refused token is not kept");
      assert.ok(!other.url().includes("#"), `the fragment is still in the URL: ${other.url()}`);
      await other.fill("#token-input", TOKEN);
      await other.click("#token-submit");
      await expectVisible(other, "#wallet", true, "wallet after a valid token");
      const account = await apiGet("/api/v1/billing/account");
      await expectText(other, "#balance", money(account.balance_micros, account.currency), "balance after a valid token");
      assert.equal(await other.isVisible("#token-form"), false, "the token form is hidden again");
      assert.equal(await other.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY), TOKEN, "the new token is kept for the tab");
    } finally {
      await fresh.close();
    }
  });

  await check(8, "no console errors and no request to another origin", async () => {
    const unexpected = expiredErrors.filter((text) => !/Failed to load resource.*\b401\b/.test(text));
    assert.deepEqual(pageErrors, [], "console errors on the page");
    assert.deepEqual(unexpected, [], "console errors on the expired-token page (401 resource errors excepted)");
    assert.deepEqual(foreign, [], `requests to origins other than ${ORIGIN}`);
  });
} catch (error) {
  failed += 1;
  console.log("not ok - the run stopped");
  console.log(String((error && error.stack) || error));
} finally {
  await browser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
