// End-to-end check of the billing developer console at ${CONSOLE_URL}/console, in headless
// Chromium through playwright-core. It runs against live services that the harness started and
// seeded; every number it checks is read from the REST API with the same token, never assumed.
//
//   CONSOLE_URL=… CHROMIUM=/usr/bin/chromium JWT_SECRET=… USER_ID=… UNPRICED_USER_ID=… \
//   LIMITED_USER_ID=… LIMITED_API=… LIMITED_KEY=… WEBHOOK_URL=… WEBHOOK_SECRET=… \
//   BILLING_TIME_ZONE=… [SCREENSHOT=out.png] node console.test.mjs
//
// USER_ID has the sample data: charges of an amount and priced ones, and a price list with a
// version in effect and one scheduled. UNPRICED_USER_ID's list has no version in effect yet.
// LIMITED_USER_ID has two spend limits, the account per day and `api:${LIMITED_API}` per month,
// and charges against them, some made with the API key LIMITED_KEY.
//
// BILLING_TIME_ZONE is the service's configured billing zone (an IANA name): the page is never
// told it by name, so the test computes what the page must show from it independently.
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
const UNPRICED_USER_ID = required("UNPRICED_USER_ID");
const LIMITED_USER_ID = required("LIMITED_USER_ID");
const LIMITED_API = required("LIMITED_API");
const LIMITED_KEY = required("LIMITED_KEY");
const WEBHOOK_URL = required("WEBHOOK_URL");
const WEBHOOK_SECRET = required("WEBHOOK_SECRET");
const BILLING_TIME_ZONE = required("BILLING_TIME_ZONE");
const SCREENSHOT = process.env.SCREENSHOT || "";
const VIEWPORT = { width: 1280, height: 900 };
const LOCAL_ZONE = "Europe/Berlin";

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
const UNPRICED_TOKEN = mintToken(UNPRICED_USER_ID, now + 3600);
const LIMITED_TOKEN = mintToken(LIMITED_USER_ID, now + 3600);

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

/** Micros as exact currency units, as the settings show them: 1500000 → "1.5". */
function units(micros) {
  const value = BigInt(micros);
  const whole = value / 1000000n;
  const fraction = String(value % 1000000n).padStart(6, "0").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : String(whole);
}

assert.equal(units(1000000), "1");
assert.equal(units(7123456), "7.123456");
assert.equal(units(1), "0.000001");

/** A price exactly, at least to the cent: 500000 → "CNY 0.50", 2000 → "CNY 0.002". */
function price(micros, currency) {
  const [whole, fraction = ""] = units(micros).split(".");
  return `${currency} ${whole}.${fraction.padEnd(2, "0")}`;
}

assert.equal(price(500000, "CNY"), "CNY 0.50");
assert.equal(price(2000, "CNY"), "CNY 0.002");
assert.equal(price(0, "CNY"), "CNY 0.00");
assert.equal(price(12345678, "CNY"), "CNY 12.345678");

/** An integer with its thousands grouped: 1000000 → "1,000,000". */
function grouped(n) {
  return BigInt(n).toLocaleString("en-US");
}

assert.equal(grouped(1001), "1,001");
assert.equal(grouped(999), "999");

/** A price's cells on the page: API, meter, and "CNY 1.50 per 1,000,000 output_tokens". */
function priceCells(p, currency) {
  return [p.api_id, p.meter, `${price(p.price_micros, currency)} per ${grouped(p.per_units)} ${p.meter}`];
}

/** A priced record's usage as the page reads it: "call 1 · output_tokens 1,001". */
function usageText(usage) {
  return usage.map((line) => `${line.meter} ${grouped(line.quantity)}`).join(" · ");
}

function addDays(key, days) {
  const [y, m, d] = key.split("-").map(Number);
  const at = new Date(Date.UTC(2000, 0, 1));
  at.setUTCFullYear(y, m - 1, d + days);
  return at.toISOString().slice(0, 10);
}

// --- time, independently of the page: Intl.DateTimeFormat in named zones -----------------------

const MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** Milliseconds of an RFC 3339 instant (the service writes microseconds). */
function instantMs(text) {
  return Date.parse(text.replace(/(\.\d{3})\d+/, "$1"));
}

/** The date and time an instant reads in `zone`. */
function clockIn(ms, zone) {
  const fields = {};
  const format = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
  });
  for (const part of format.formatToParts(new Date(ms))) fields[part.type] = Number(part.value);
  return { ...fields, hour: fields.hour % 24 };
}

const two = (n) => String(n).padStart(2, "0");

/** "1 Jan 00:00" in `zone`. */
function dayAndTime(ms, zone) {
  const c = clockIn(ms, zone);
  return `${c.day} ${MONTH_NAMES[c.month - 1]} ${two(c.hour)}:${two(c.minute)}`;
}

/** "2 Jan 2026 17:00:05" in `zone`. */
function dateAndTime(ms, zone) {
  const c = clockIn(ms, zone);
  return `${c.day} ${MONTH_NAMES[c.month - 1]} ${c.year} ${two(c.hour)}:${two(c.minute)}:${two(c.second)}`;
}

/** "YYYY-MM-DD" in `zone`. */
function dateIn(ms, zone) {
  const c = clockIn(ms, zone);
  return `${c.year}-${two(c.month)}-${two(c.day)}`;
}

/** The instant a date's midnight is in `zone`. */
function midnightIn(key, zone) {
  const [y, m, d] = key.split("-").map(Number);
  const wanted = Date.UTC(y, m - 1, d);
  let guess = wanted;
  for (let i = 0; i < 3; i += 1) {
    const c = clockIn(guess, zone);
    guess = wanted - (Date.UTC(c.year, c.month - 1, c.day, c.hour, c.minute, c.second) - guess);
  }
  return guess;
}

assert.equal(new Date(midnightIn("2026-01-01", "Asia/Shanghai")).toISOString(), "2025-12-31T16:00:00.000Z");
assert.equal(new Date(midnightIn("2026-07-01", "Europe/Berlin")).toISOString(), "2026-06-30T22:00:00.000Z");
assert.equal(dayAndTime(Date.UTC(2025, 11, 31, 16), "Asia/Shanghai"), "1 Jan 00:00");
assert.equal(dayAndTime(Date.UTC(2025, 11, 31, 16), "Europe/Berlin"), "31 Dec 17:00");

/**
 * A reset as the page says it with the browser in `zone`: in the billing zone, named, then in
 * `zone` when its clock reads otherwise.
 */
function resetsText(instant, zone) {
  const ms = instantMs(instant);
  const inBilling = `Resets ${dayAndTime(ms, BILLING_TIME_ZONE)} (${BILLING_TIME_ZONE})`;
  const local = dayAndTime(ms, zone);
  return local === dayAndTime(ms, BILLING_TIME_ZONE) ? inBilling : `${inBilling} · ${local} your time (${zone})`;
}

// --- the REST API and the webhook ------------------------------------------------------------

async function apiGet(path, token = TOKEN) {
  const response = await fetch(`${BASE}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  const text = await response.text();
  assert.equal(response.status, 200, `GET ${path} answered ${response.status}: ${text}`);
  return path.includes("/records/export") ? text : JSON.parse(text);
}

async function apiPatch(path, body, method = "PATCH") {
  const response = await fetch(`${BASE}${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `${method} ${path} answered ${response.status}: ${text}`);
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

/**
 * Walks the records the API selects with `query` page by page, clicking load-more, and checks
 * the table against each; returns every record the API answered.
 */
async function expectAllPages(page, query, what) {
  const base = `/api/v1/billing/records?limit=20${query ? `&${query}` : ""}`;
  let answer = await apiGet(base);
  let records = answer.records;
  await expectRowIds(page, records.map((record) => record.record_id), `${what}, page 1`);
  for (let pageNo = 2; answer.next_cursor; pageNo += 1) {
    assert.ok(pageNo < 100, "too many pages");
    await expectVisible(page, "#load-more", true, `${what}: load-more before page ${pageNo}`);
    await page.click("#load-more");
    answer = await apiGet(`${base}&cursor=${encodeURIComponent(answer.next_cursor)}`);
    records = records.concat(answer.records);
    await expectRowIds(page, records.map((record) => record.record_id), `${what}, after page ${pageNo}`);
  }
  await expectVisible(page, "#load-more", false, `${what}: load-more once the API's next_cursor is null`);
  return records;
}

/**
 * Checks the Prices card against a `GET /api/v1/billing/prices` answer, times in `zone` (the
 * browser's): the version in effect (or that none is) with its prices, then each scheduled one.
 */
async function expectPrices(page, list, zone) {
  const named = (instant) => `${dateAndTime(instantMs(instant), zone)} (${zone})`;
  const inEffect = list.version !== null;
  const current = inEffect
    ? `List ${list.name}, version ${list.version}, in effect since ${named(list.effective_from)}`
    : `No version of list ${list.name} is in effect yet.`;
  await expectText(page, "#prices-current", current, "the version in effect");
  await expectVisible(page, "#prices-current-wrap", inEffect, "the table of the prices in effect");
  const rows = (selector) =>
    page.$$eval(`${selector} tbody tr[data-api]`, (trs) => trs.map((tr) => Array.from(tr.cells, (cell) => cell.textContent.trim())));
  if (inEffect) {
    assert.deepEqual(await rows("#prices-current-wrap"), list.prices.map((p) => priceCells(p, list.currency)), "the prices in effect");
  }
  const versions = "#prices-scheduled .price-version";
  await settle(page, ([selector, n]) => document.querySelectorAll(selector).length === n, [versions, list.scheduled.length]);
  const shown = await page.$$eval(versions, (elements) =>
    elements.map((element) => ({ version: element.getAttribute("data-version"), title: element.querySelector("h4").textContent.trim() }))
  );
  assert.deepEqual(
    shown,
    list.scheduled.map((v) => ({ version: String(v.version), title: `Version ${v.version}, takes effect ${named(v.effective_from)}` })),
    "the scheduled versions and when each takes effect"
  );
  for (const v of list.scheduled) {
    assert.deepEqual(await rows(`#prices-v${v.version}-wrap`), v.prices.map((p) => priceCells(p, v.currency)), `the prices of version ${v.version}`);
  }
  await expectVisible(page, "#prices-scheduled-none", list.scheduled.length === 0, "the note that nothing is scheduled");
}

const LIMITS = "/api/v1/billing/limits";
const LIMIT_ROWS = "#limits-list li[data-scope]";

/** The spend limits card's lines as the page shows them, with their data attributes. */
async function shownLimits(page) {
  return page.$$eval(LIMIT_ROWS, (items) =>
    items.map((li) => {
      const text = (selector) => (li.querySelector(selector) ? li.querySelector(selector).textContent.trim() : null);
      const bar = li.querySelector('[role="progressbar"]');
      return {
        scope: li.getAttribute("data-scope"),
        window: li.getAttribute("data-window"),
        saved: li.getAttribute("data-saved"),
        limit: li.getAttribute("data-limit-micros"),
        spent: li.getAttribute("data-spent-micros"),
        remaining: li.getAttribute("data-remaining-micros"),
        name: text(".limit-name"),
        amounts: text(".limit-text"),
        left: text(".limit-remaining"),
        resets: text(".limit-resets"),
        percent: bar ? bar.getAttribute("aria-valuenow") : null,
        width: bar ? bar.style.width : null,
      };
    })
  );
}

/**
 * Checks the spend limits card against a `GET /api/v1/billing/limits` answer, the browser in
 * `zone`: a bar per limit, in the API's order, filled by spent / limit (whole percents, at most
 * 100), spent to the cent over the limit exactly, what remains, and when the window resets.
 */
async function expectLimits(page, answer, currency, zone) {
  const expected = answer.limits.map((l) => {
    const [limit, spent] = [BigInt(l.limit_micros), BigInt(l.spent_micros)];
    let percent = limit > 0n ? (spent * 100n) / limit : 100n;
    if (percent > 100n) percent = 100n;
    return {
      scope: l.scope,
      window: l.window,
      saved: "true",
      limit: String(limit),
      spent: String(spent),
      remaining: String(BigInt(l.remaining_micros)),
      name: `${l.scope} per ${l.window}`,
      amounts: `${money(spent, currency)} / ${price(limit, currency)}`,
      left: `${money(l.remaining_micros, currency)} remaining`,
      resets: resetsText(l.resets_at, zone),
      percent: String(percent),
      width: `${percent}%`,
    };
  });
  const keys = expected.map((e) => [e.scope, e.window, e.saved, e.limit, e.spent].join(" "));
  await settle(
    page,
    ([selector, want]) => {
      const attributes = ["data-scope", "data-window", "data-saved", "data-limit-micros", "data-spent-micros"];
      const shown = Array.from(document.querySelectorAll(selector), (li) => attributes.map((a) => li.getAttribute(a)).join(" "));
      return shown.length === want.length && shown.every((key, i) => key === want[i]);
    },
    [LIMIT_ROWS, keys]
  );
  assert.deepEqual(await shownLimits(page), expected, "the spend limits card");
}

/** Runs axe-core (already added to the page) and asserts no serious or critical violation. */
async function axeAudit(page, what) {
  const violations = await page.evaluate(async () => {
    const results = await window.axe.run(document, { resultTypes: ["violations"] });
    return results.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  for (const v of violations) console.log(`# axe-core, ${what}: ${v.impact} ${v.id} (${v.help}) at ${v.nodes.join(", ")}`);
  const grave = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(grave, [], `${what}: serious or critical axe-core violations`);
}

/** The CSV the export button downloads. */
async function downloadCsv(page) {
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: WAIT_MS }), page.click("#export-csv")]);
  assert.equal(download.suggestedFilename(), "records.csv", "download file name");
  const file = await download.path();
  assert.ok(file, `the download failed: ${await download.failure()}`);
  return readFile(file, "utf8");
}

/** Waits until `predicate(arg)` holds in the page; a timeout is left to the assertions after. */
async function settle(page, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: WAIT_MS });
  } catch (_) {
    // Reported by the assertions that follow.
  }
}

async function focusedId(page) {
  return page.evaluate(() => (document.activeElement ? document.activeElement.id : ""));
}

/** Presses Tab (or Shift+Tab, for an element before the focus) until `id` has the focus. */
async function tabTo(page, id) {
  const forward = await page.evaluate((target) => {
    const active = document.activeElement;
    const element = document.getElementById(target);
    if (!active || active === document.body || !element) return true;
    return Boolean(active.compareDocumentPosition(element) & Node.DOCUMENT_POSITION_FOLLOWING);
  }, id);
  const key = forward ? "Tab" : "Shift+Tab";
  for (let presses = 0; presses < 80; presses += 1) {
    if ((await focusedId(page)) === id) return;
    await page.keyboard.press(key);
  }
  assert.fail(`#${id} never got the focus by ${key} (the focus is on #${await focusedId(page)})`);
}

/**
 * Every visible control's accessible name as Chromium computes it (its accessibility tree, read
 * through the DevTools protocol): buttons, inputs, selects, text areas and focusable elements.
 */
async function controlNames(page) {
  const cdp = await page.context().newCDPSession(page);
  try {
    await cdp.send("Accessibility.enable");
    const { root } = await cdp.send("DOM.getDocument", { depth: -1 });
    const { nodeIds } = await cdp.send("DOM.querySelectorAll", {
      nodeId: root.nodeId,
      selector: "button, input, select, textarea, [tabindex]",
    });
    const controls = [];
    for (const nodeId of nodeIds) {
      const { node } = await cdp.send("DOM.describeNode", { nodeId });
      const attributes = node.attributes || [];
      const id = attributes[attributes.indexOf("id") + 1] || node.localName;
      const { nodes } = await cdp.send("Accessibility.getPartialAXTree", { nodeId, fetchRelatives: false });
      const ax = nodes.find((n) => n.backendDOMNodeId === node.backendNodeId) || nodes[0];
      if (!ax || ax.ignored) continue; // hidden
      controls.push({ id, role: ax.role ? ax.role.value : "", name: ax.name ? String(ax.name.value).trim() : "" });
    }
    return controls;
  } finally {
    await cdp.detach();
  }
}

/** Asserts every visible control is named, and the named ones are named as `expected` says. */
async function expectNamedControls(page, expected, what) {
  const controls = await controlNames(page);
  assert.ok(controls.length >= Object.keys(expected).length, `${what}: controls found ${JSON.stringify(controls)}`);
  const unnamed = controls.filter((control) => !control.name);
  assert.deepEqual(unnamed, [], `${what}: controls without an accessible name`);
  for (const [id, name] of Object.entries(expected)) {
    const control = controls.find((c) => c.id === id);
    assert.ok(control, `${what}: #${id} is not a visible control: ${JSON.stringify(controls)}`);
    assert.match(control.name, name, `${what}: the accessible name of #${id}`);
  }
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
  const context = await browser.newContext({ viewport: VIEWPORT, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const pageErrors = [];
  const foreign = [];
  const rechargePosts = [];
  watch(page, pageErrors, foreign, rechargePosts);

  /**
   * Opens the console with `token` in a browser context of its own (`options` beside the
   * viewport), its console errors gathered in `errors`, runs `body` on the page, then closes it.
   */
  async function inOwnContext({ options = {}, token = TOKEN, errors = pageErrors }, body) {
    const context = await browser.newContext({ viewport: VIEWPORT, ...options });
    try {
      const other = await context.newPage();
      other.setDefaultTimeout(WAIT_MS);
      watch(other, errors, foreign, null);
      await other.goto(`${BASE}/console#token=${token}`);
      await body(other);
    } finally {
      await context.close();
    }
  }
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
      await page.waitForSelector("#prices-current-wrap tbody tr", { timeout: WAIT_MS });
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

  await check(10, "date filters: whole days in the browser's zone as the API selects them (from inclusive, to exclusive); the CSV has the same filter", async () => {
    const zone = await page.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone);
    assert.ok(zone, "the browser names its time zone");
    // The page sends its days as instants: the first day's midnight and the midnight after the
    // last day, in the browser's zone.
    const range = (first, last) =>
      `from=${encodeURIComponent(new Date(midnightIn(first, zone)).toISOString())}` +
      `&to=${encodeURIComponent(new Date(midnightIn(addDays(last, 1), zone)).toISOString())}`;
    const today = dateIn(Date.now(), zone);
    const yesterday = addDays(today, -1);
    await expectText(page, "#filter-zone", `Whole days in your time zone (${zone}), both included.`, "the filter says its zone");

    await page.selectOption("#filter-type", "");
    await page.fill("#filter-from", today);
    await page.fill("#filter-to", today);
    await page.click("#filter-apply");
    const todays = await expectAllPages(page, range(today, today), `${today} to ${today} (${zone})`);
    assert.ok(todays.length > 0, `the API has records of today, ${today} in ${zone}`);
    assert.equal(await downloadCsv(page), await apiGet(`/api/v1/billing/records/export?${range(today, today)}`), "the CSV equals the API's export of today");

    // Yesterday alone: nothing, the user's records are all of today; `to` ends at today's midnight.
    const none = await apiGet(`/api/v1/billing/records?limit=20&${range(yesterday, yesterday)}`);
    assert.deepEqual(none.records, [], `the API has no records on ${yesterday}`);
    await page.fill("#filter-from", yesterday);
    await page.fill("#filter-to", yesterday);
    await page.click("#filter-apply");
    await expectVisible(page, "#records-empty", true, "the empty range shows no records");
    await expectRowIds(page, [], `${yesterday} to ${yesterday}`);
    await expectVisible(page, "#load-more", false, "load-more for an empty range");
    assert.equal(await downloadCsv(page), await apiGet(`/api/v1/billing/records/export?${range(yesterday, yesterday)}`), "the CSV equals the API's export of yesterday");

    // A range from yesterday to today holds today's records too.
    await page.fill("#filter-from", yesterday);
    await page.fill("#filter-to", today);
    await page.click("#filter-apply");
    await expectAllPages(page, range(yesterday, today), `${yesterday} to ${today}`);

    // From after To is refused on the page; the table keeps what it showed.
    const shown = await rowIds(page);
    await page.fill("#filter-from", today);
    await page.fill("#filter-to", yesterday);
    await page.click("#filter-apply");
    await expectVisible(page, "#filter-error", true, "From after To");
    assert.deepEqual(await rowIds(page), shown, "the table after a refused filter");

    await page.fill("#filter-from", "");
    await page.fill("#filter-to", "");
    await page.click("#filter-apply");
    await expectVisible(page, "#filter-error", false, "the error once the dates are cleared");
    const all = await apiGet("/api/v1/billing/records?limit=20");
    await expectRowIds(page, all.records.map((record) => record.record_id), "no date filter again");
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
      // Each day's numbers, exactly as the API sums them: its bar's title.
      const title = await page.$eval(`#usage-chart g.day[data-day="${bucket.key}"] title`, (t) => t.textContent);
      const units = (micros) => money(micros, currency).slice(currency.length + 1);
      const calls = Number(bucket.calls);
      const total = BigInt(bucket.free_micros) + BigInt(bucket.balance_micros);
      assert.equal(
        title,
        `${bucket.key}: ${money(total, currency)} (free ${units(bucket.free_micros)}, balance ${units(bucket.balance_micros)}), ` +
          `${calls} call${calls === 1 ? "" : "s"}`,
        `the numbers of ${bucket.key} in the chart`
      );
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

  await check(15, `prices: the list's version in effect, since when (${LOCAL_ZONE}, named), its prices and the scheduled versions as the API answers; a list with none in effect says so`, async () => {
    const list = await apiGet("/api/v1/billing/prices");
    assert.notEqual(list.version, null, "the seeded list has a version in effect");
    assert.ok(list.prices.length > 0 && list.scheduled.length > 0, "the seeded list has prices and a scheduled version");
    await inOwnContext({ options: { timezoneId: LOCAL_ZONE } }, (other) => expectPrices(other, list, LOCAL_ZONE));

    const unpriced = await apiGet("/api/v1/billing/prices", UNPRICED_TOKEN);
    assert.equal(unpriced.version, null, "the unpriced user's list has no version in effect");
    assert.ok(unpriced.scheduled.length > 0, "the unpriced user's list has a scheduled version");
    await inOwnContext({ options: { timezoneId: LOCAL_ZONE }, token: UNPRICED_TOKEN }, (other) => expectPrices(other, unpriced, LOCAL_ZONE));
  });

  await check(16, "records: each priced record shows its usage and the list version that priced it as the API says; a charge of an amount shows none", async () => {
    const records = await expectAllPages(page, "", "every record");
    const priced = records.filter((record) => record.usage !== null);
    assert.ok(priced.length > 0 && priced.length < records.length, "the seeded user has priced records and others");
    const shown = await page.$$eval(ROWS, (rows) =>
      rows.map((row) => {
        const cell = row.querySelector("td.usage");
        const text = (selector) => (cell && cell.querySelector(selector) ? cell.querySelector(selector).textContent.trim() : null);
        return [row.getAttribute("data-record-id"), text(".usage-lines"), text(".usage-price"), cell ? cell.textContent.trim() : null];
      })
    );
    const expected = records.map((record) => {
      if (record.usage === null) return [record.record_id, null, null, ""];
      const [used, version] = [usageText(record.usage), `${record.price_list} v${record.price_version}`];
      return [record.record_id, used, version, `${used}${version}`];
    });
    assert.deepEqual(shown, expected, "each record's usage and price version (nothing for a charge of an amount)");
  });

  await check(17, `spend limits: each limit's spent, limit, remaining and reset (billing time and ${LOCAL_ZONE}) as the API says; a refused set shows the API's message, the edits kept and nothing changed; a key limit added in the form and saved is what the API then reads; named controls, no serious axe-core violation`, async () => {
    const account = await apiGet("/api/v1/billing/account", LIMITED_TOKEN);
    const before = await apiGet(LIMITS, LIMITED_TOKEN);
    assert.deepEqual(
      before.limits.map((l) => `${l.scope} ${l.window}`).sort(),
      ["account day", `api:${LIMITED_API} month`].sort(),
      "the seeded limits"
    );
    // The seeded charges count against the limits (the day's back at 0 should the billing day
    // have turned since).
    assert.ok(before.limits.some((l) => BigInt(l.spent_micros) > 0n), `the seeded charges count: ${JSON.stringify(before.limits)}`);
    const limitErrors = [];
    const refusal = /^console error: Failed to load resource: the server responded with a status of 400 .*\/api\/v1\/billing\/limits\)$/;
    const row = (scope, window) => `#limits-list li[data-scope="${scope}"][data-window="${window}"]`;
    const badKey = "key:not a key";
    const newKey = `key:${LIMITED_KEY}`;

    // What the API reads once the form saved, for the checks of the second context.
    let after;
    await inOwnContext({ options: { timezoneId: LOCAL_ZONE }, token: LIMITED_TOKEN, errors: limitErrors }, async (other) => {
      await expectText(other, "#balance", money(account.balance_micros, account.currency), "balance");
      await expectLimits(other, before, account.currency, LOCAL_ZONE);
      await expectVisible(other, "#limits-none", false, "the note that there are no limits");

      /** Clicks Save; the PUT the page sent and the API's answer. */
      const save = async () => {
        const [response] = await Promise.all([
          other.waitForResponse((r) => new URL(r.url()).pathname === LIMITS && r.request().method() === "PUT"),
          other.click("#limits-save"),
        ]);
        return { status: response.status(), sent: response.request().postData(), answer: await response.json() };
      };
      const formValues = () => other.evaluate(() => ["limits-kind", "limits-id", "limits-window", "limits-amount"].map((id) => document.getElementById(id).value));

      // A key id the service refuses: its message in the card, the edited set and the form kept.
      await other.selectOption("#limits-kind", "key");
      await expectVisible(other, "#limits-id", true, "the id input of a key's limit");
      await other.fill("#limits-id", badKey.slice(4));
      await other.selectOption("#limits-window", "day");
      await other.fill("#limits-amount", "1");
      await other.click("#limits-add");
      await expectVisible(other, `${row(badKey, "day")}[data-saved="false"]`, true, "the added limit, not saved yet");
      const typed = await formValues();
      const refused = await save();
      assert.equal(refused.status, 400, `the refused set: ${JSON.stringify(refused.answer)}`);
      assert.equal(refused.answer.error.code, "INVALID_ARGUMENT", "the refusal's code");
      await expectText(other, "#limits-error", `The service refused the limits: ${refused.answer.error.message}`, "the API's message in the card");
      assert.deepEqual(await formValues(), typed, "the form after the refusal");
      assert.deepEqual(
        (await shownLimits(other)).map((l) => [l.scope, l.window, l.saved]),
        [...before.limits.map((l) => [l.scope, l.window, "true"]), [badKey, "day", "false"]],
        "the edited set after the refusal"
      );
      assert.deepEqual(await apiGet(LIMITS, LIMITED_TOKEN), before, "the API's limits after the refused set");

      // Removed, and a valid key's limit added exactly in micros: the whole set sent and saved.
      await other.click(`${row(badKey, "day")} .limit-remove`);
      await expectVisible(other, row(badKey, "day"), false, "the refused limit once removed");
      await expectVisible(other, "#limits-error", false, "the refusal once the set is edited");
      await other.fill("#limits-id", newKey.slice(4));
      await other.fill("#limits-amount", "3.000001");
      await other.click("#limits-add");
      await expectVisible(other, `${row(newKey, "day")}[data-saved="false"]`, true, "the key's limit, not saved yet");
      const saved = await save();
      assert.equal(saved.status, 200, `the saved set: ${JSON.stringify(saved.answer)}`);
      assert.ok(saved.sent.includes(`{"scope":"${newKey}","window":"day","limit_micros":3000001}`), `the PUT body: ${saved.sent}`);
      assert.deepEqual(
        JSON.parse(saved.sent),
        { limits: [...before.limits.map((l) => ({ scope: l.scope, window: l.window, limit_micros: l.limit_micros })), { scope: newKey, window: "day", limit_micros: 3000001 }] },
        "the whole set sent"
      );
      await expectText(other, "#limits-status", "Saved.", "the status after saving");
      after = await apiGet(LIMITS, LIMITED_TOKEN);
      assert.equal(after.limits.length, 3, `the API's limits after saving: ${JSON.stringify(after.limits)}`);
      const added = after.limits.find((l) => l.scope === newKey && l.window === "day");
      assert.ok(added && added.limit_micros === 3000001, `the API reads the key's limit: ${JSON.stringify(after.limits)}`);
      assert.deepEqual(saved.answer, after, "the PUT's answer is what the API reads");
      await expectLimits(other, after, account.currency, LOCAL_ZONE);
    });

    // The refused save is the one console error asked for.
    const refusalsLogged = () => limitErrors.filter((text) => refusal.test(text)).length;
    await pollApi(async () => refusalsLogged(), (count) => count >= 1);
    assert.equal(refusalsLogged(), 1, `the refused save logged: ${limitErrors.join("; ")}`);
    assert.deepEqual(limitErrors.filter((text) => !refusal.test(text)), [], "console errors on the spend limits pages");

    // Every control of the card named, a line not saved yet among the bars; no grave axe-core
    // violation (this context alone bypasses the page's policy, for axe-core's script).
    const axeSource = await readFile(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
    await inOwnContext({ options: { bypassCSP: true }, token: LIMITED_TOKEN, errors: limitErrors }, async (other) => {
      await other.waitForSelector(`${row(newKey, "day")}[data-saved="true"]`);
      await other.selectOption("#limits-kind", "api");
      await other.fill("#limits-id", "embeddings");
      await other.fill("#limits-amount", "0");
      await other.click("#limits-add");
      await other.waitForSelector(`${row("api:embeddings", "day")}[data-saved="false"]`);
      const controls = { "limits-kind": /^Scope$/, "limits-id": /^API id$/, "limits-window": /^Window$/, "limits-amount": /^Limit/, "limits-add": /^Add limit$/, "limits-save": /^Save limits$/ };
      await expectNamedControls(other, controls, "the spend limits");
      const removes = await other.$$eval("#limits-list .limit-remove", (buttons) => buttons.map((b) => b.getAttribute("aria-label")));
      assert.deepEqual(
        removes,
        [...after.limits.map((l) => `Remove the limit ${l.scope} per ${l.window}`), "Remove the limit api:embeddings per day"],
        "each remove button names its limit"
      );
      await other.addScriptTag({ content: axeSource });
      await axeAudit(other, "the spend limits");
    });
    assert.deepEqual(limitErrors.filter((text) => !refusal.test(text)), [], "console errors on the spend limits pages");
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

  // The alert requests the page sends (method and body), for the settings checks.
  const alertWrites = [];
  page.on("request", (request) => {
    if (request.method() !== "GET" && new URL(request.url()).pathname === "/api/v1/billing/alerts") {
      alertWrites.push({ method: request.method(), body: request.postData() });
    }
  });

  /** Opens the settings and waits until they show what the API reads. */
  async function openSettings(target) {
    await target.click("#settings-open");
    await expectVisible(target, "#settings", true, "the settings");
    await settle(target, () => !document.querySelector("#settings-threshold").disabled);
    assert.equal(await target.$eval("#settings-open", (b) => b.getAttribute("aria-expanded")), "true", "settings-open aria-expanded");
  }

  await check(11, "settings: threshold and webhook saved whole as the API reads them; the signing secret shown once, then only said to be set; rotation; refused input shown at its field, nothing changed", async () => {
    await page.reload();
    const account = await apiGet("/api/v1/billing/account");
    await expectText(page, "#balance", money(account.balance_micros, currency), "balance after reload");
    const start = await apiGet("/api/v1/billing/alerts");
    await openSettings(page);
    assert.equal(await page.inputValue("#settings-threshold"), units(start.low_balance_threshold_micros), "the threshold shown");
    assert.equal(await page.inputValue("#settings-webhook"), start.webhook_url || "", "the webhook shown");
    if (!start.signing_secret_set) await expectText(page, "#settings-secret-state", "No signing secret yet: one is made, and shown once, when you first set a webhook.", "no secret yet");
    await expectVisible(page, "#settings-secret-new", false, "no secret to show");

    // Both fields, exactly to the micro; the first webhook gets a secret, shown in that answer.
    const hook = `http://127.0.0.1:9/billing-alerts/${crypto.randomUUID()}`;
    await page.fill("#settings-threshold", "7.123456");
    await page.fill("#settings-webhook", hook);
    const writes = alertWrites.length;
    await page.click("#settings-save");
    await settle(page, () => /^Saved/.test(document.querySelector("#settings-status").textContent));
    assert.match((await textOf(page, "#settings-status")) || "", /^Saved/, "settings-status after saving");
    const put = alertWrites.slice(writes);
    assert.equal(put.length, 1, `one write: ${JSON.stringify(put)}`);
    assert.equal(put[0].method, "PUT", "the settings are saved whole");
    assert.equal(put[0].body, `{"low_balance_threshold_micros":7123456,"webhook_url":${JSON.stringify(hook)}}`, "the PUT body");
    let alerts = await apiGet("/api/v1/billing/alerts");
    assert.deepEqual(alerts, { low_balance_threshold_micros: 7123456, threshold_set: true, webhook_url: hook, signing_secret_set: true }, "the API's settings after saving");
    await expectVisible(page, "#settings-secret-new", true, "the new signing secret");
    assert.match((await textOf(page, "#settings-secret-new")) || "", /shown once, copy it now/i, "the note with the secret");
    const secret = (await textOf(page, "#settings-secret")) || "";
    assert.ok(secret.length >= 16, `the secret shown: ${secret}`);

    // The largest threshold, exact; the wallet's warning follows it at once.
    await page.fill("#settings-threshold", "1000000000");
    await page.click("#settings-save");
    await settle(page, (want) => document.querySelector("#settings-threshold").value === want && /^Saved/.test(document.querySelector("#settings-status").textContent), "1000000000");
    alerts = await apiGet("/api/v1/billing/alerts");
    assert.equal(alerts.low_balance_threshold_micros, 1000000000000000, "the API's threshold after saving 1000000000 units");
    assert.equal(alerts.webhook_url, hook, "the webhook stays");
    await expectVisible(page, "#low-balance", true, "the low-balance warning under the new threshold");
    assert.ok(((await textOf(page, "#low-balance")) || "").includes(money(1000000000000000n, currency)), "the warning names the new threshold");
    assert.equal(await textOf(page, "#settings-secret"), secret, "the secret stays shown until the settings are read again");

    // After a reload: set, never shown.
    await page.reload();
    await expectText(page, "#balance", money(account.balance_micros, currency), "balance after reload");
    await openSettings(page);
    assert.equal(await page.inputValue("#settings-threshold"), "1000000000", "the threshold after reload");
    assert.equal(await page.inputValue("#settings-webhook"), hook, "the webhook after reload");
    await expectVisible(page, "#settings-secret-new", false, "the secret after reload");
    assert.match((await textOf(page, "#settings-secret-state")) || "", /^A signing secret is set\./, "settings-secret-state after reload");
    assert.ok(!(await page.evaluate(() => document.body.innerText)).includes(secret), "the secret appears nowhere after reload");

    // Rotation: a new secret, shown once; the rest stays.
    await page.click("#settings-rotate");
    await expectVisible(page, "#settings-secret-new", true, "the rotated secret");
    const rotated = (await textOf(page, "#settings-secret")) || "";
    assert.ok(rotated.length >= 16 && rotated !== secret, `a new secret: ${rotated}`);
    assert.deepEqual(alertWrites[alertWrites.length - 1], { method: "PATCH", body: '{"rotate_signing_secret":true}' }, "the rotation asks for nothing else");
    assert.deepEqual(await apiGet("/api/v1/billing/alerts"), alerts, "the settings after the rotation");

    // Refused by the service: the message at the field, nothing changed.
    await page.fill("#settings-threshold", "2.5");
    await page.fill("#settings-webhook", "ftp://example.com/hook");
    await page.click("#settings-save");
    await expectVisible(page, "#settings-webhook-error", true, "the error of an ftp URL");
    assert.match((await textOf(page, "#settings-webhook-error")) || "", /http\(s\) URL/, "settings-webhook-error text (the API's)");
    assert.equal(await page.$eval("#settings-webhook", (i) => i.getAttribute("aria-invalid")), "true", "the webhook is marked invalid");
    assert.equal(await page.isVisible("#settings-threshold-error"), false, "the threshold was fine");
    assert.ok(!/^Saved/.test((await textOf(page, "#settings-status")) || ""), "not saved");
    assert.deepEqual(await apiGet("/api/v1/billing/alerts"), alerts, "the settings after a refused URL");

    // Both fields refused at once (over the largest threshold), each at its field.
    await page.fill("#settings-threshold", "1000000000.000001");
    await page.click("#settings-save");
    await expectVisible(page, "#settings-threshold-error", true, "the error of a threshold over the largest");
    await expectVisible(page, "#settings-webhook-error", true, "the error of the ftp URL again");
    assert.deepEqual(await apiGet("/api/v1/billing/alerts"), alerts, "the settings after a refused threshold");

    // Chromium logs each refused request as a console error: these two are the ones asked for,
    // any other error stays for check 8.
    const refusal = /^console error: Failed to load resource: the server responded with a status of 400 .*\/api\/v1\/billing\/alerts\)$/;
    const refusalsLogged = () => pageErrors.filter((text) => refusal.test(text)).length;
    await pollApi(async () => refusalsLogged(), (count) => count >= 2);
    assert.equal(refusalsLogged(), 2, `the refused saves logged: ${pageErrors.join("; ")}`);
    pageErrors.splice(0, pageErrors.length, ...pageErrors.filter((text) => !refusal.test(text)));

    // Not a number: refused on the page, nothing sent.
    const before = alertWrites.length;
    await page.fill("#settings-threshold", "1.2.3");
    await page.click("#settings-save");
    await expectVisible(page, "#settings-threshold-error", true, "the error of 1.2.3");
    assert.equal(alertWrites.length, before, "nothing sent for a threshold that is not a number");

    // The usual settings again for the checks after this one.
    await apiPatch("/api/v1/billing/alerts", { low_balance_threshold_micros: 1000000, webhook_url: null }, "PUT");
    await page.click("#settings-close");
    await expectVisible(page, "#settings", false, "the settings after close");
    assert.equal(await focusedId(page), "settings-open", "the focus returns to the settings button");
  });

  await check(12, "keyboard only (Tab, Enter, Space, arrows): filter, load more, open the settings, save, close", async () => {
    await page.reload();
    await page.waitForSelector(ROWS);
    const recharges = await apiGet("/api/v1/billing/records?limit=20&type=recharge");
    await tabTo(page, "filter-type");
    for (let presses = 0; presses < 10 && (await page.inputValue("#filter-type")) !== "recharge"; presses += 1) await page.keyboard.press("ArrowDown");
    assert.equal(await page.inputValue("#filter-type"), "recharge", "the type chosen with the arrow keys");
    await tabTo(page, "filter-apply");
    await page.keyboard.press("Enter");
    await expectRowIds(page, recharges.records.map((record) => record.record_id), "type=recharge applied with Enter");

    await tabTo(page, "filter-type");
    for (let presses = 0; presses < 10 && (await page.inputValue("#filter-type")) !== ""; presses += 1) await page.keyboard.press("ArrowUp");
    await tabTo(page, "filter-apply");
    await page.keyboard.press("Space");
    const first = await apiGet("/api/v1/billing/records?limit=20");
    await expectRowIds(page, first.records.map((record) => record.record_id), "every type applied with Space");
    const second = await apiGet(`/api/v1/billing/records?limit=20&cursor=${encodeURIComponent(first.next_cursor)}`);
    await tabTo(page, "load-more");
    await page.keyboard.press("Enter");
    await expectRowIds(page, first.records.concat(second.records).map((record) => record.record_id), "load more with Enter");

    await tabTo(page, "settings-open");
    await page.keyboard.press("Enter");
    await expectVisible(page, "#settings", true, "the settings opened with Enter");
    assert.equal(await focusedId(page), "settings-title", "the focus moves to the settings");
    await settle(page, () => !document.querySelector("#settings-threshold").disabled);
    await tabTo(page, "settings-threshold");
    await page.keyboard.press("ControlOrMeta+A");
    await page.keyboard.type("4.5");
    await tabTo(page, "settings-save");
    await page.keyboard.press("Space");
    await settle(page, () => /^Saved/.test(document.querySelector("#settings-status").textContent));
    const alerts = await apiGet("/api/v1/billing/alerts");
    assert.equal(alerts.low_balance_threshold_micros, 4500000, "the threshold typed and saved with the keyboard");
    assert.equal(alerts.webhook_url, null, "the webhook stays none");
    await page.keyboard.press("Escape");
    await expectVisible(page, "#settings", false, "the settings closed with Escape");
    assert.equal(await focusedId(page), "settings-open", "the focus returns to the settings button");
    await apiPatch("/api/v1/billing/alerts", { low_balance_threshold_micros: 1000000 });
  });

  await check(13, `times as users read them: the free quota's reset in billing time and in ${LOCAL_ZONE}; records in ${LOCAL_ZONE}, named`, async () => {
    const account = await apiGet("/api/v1/billing/account");
    const resets = instantMs(account.free_quota.resets_at);
    const billing = clockIn(resets, BILLING_TIME_ZONE);
    assert.deepEqual([billing.day, billing.hour, billing.minute], [1, 0, 0], `the reset is midnight on the 1st in ${BILLING_TIME_ZONE}`);
    assert.equal(account.free_quota.time_zone, BILLING_TIME_ZONE, "the account names the billing time zone");
    const inBilling = `Resets ${dayAndTime(resets, BILLING_TIME_ZONE)} (${BILLING_TIME_ZONE})`;
    const records = await apiGet("/api/v1/billing/records?limit=20");
    for (const zone of [LOCAL_ZONE, BILLING_TIME_ZONE]) {
      await inOwnContext({ options: { timezoneId: zone } }, async (other) => {
        const sameClock = dayAndTime(resets, zone) === dayAndTime(resets, BILLING_TIME_ZONE);
        const expected = sameClock ? inBilling : `${inBilling} · ${dayAndTime(resets, zone)} your time (${zone})`;
        await expectText(other, "#free-resets", expected, `the reset line with the browser in ${zone}`);
        await expectText(other, "#records-time", `Time (${zone})`, `the records' time column with the browser in ${zone}`);
        await expectRowIds(other, records.records.map((record) => record.record_id), `the first page with the browser in ${zone}`);
        const times = await other.$$eval(ROWS, (rows) => rows.map((row) => row.cells[0].textContent.trim()));
        assert.deepEqual(times, records.records.map((record) => dateAndTime(instantMs(record.created_at), zone)), `record times in ${zone}`);
      });
    }
  });

  await check(14, "accessibility: every control named (the price tables' regions too); no serious or critical axe-core violation on the wallet, the prices, the settings and the token form", async () => {
    const axeSource = await readFile(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
    // The page's policy (script-src 'self') refuses inline scripts, axe-core's injected one too:
    // this context alone bypasses the policy, every other check runs under it.
    await inOwnContext({ options: { bypassCSP: true } }, async (other) => {
      const account = await apiGet("/api/v1/billing/account");
      await expectText(other, "#balance", money(account.balance_micros, currency), "balance");
      await other.waitForSelector(ROWS);
      await other.waitForSelector("#usage-chart");
      await other.waitForSelector("#top-apis tbody tr[data-api]");
      await other.waitForSelector("#prices-current-wrap tbody tr[data-api]");
      await other.waitForSelector("#prices-scheduled .price-version");
      await other.addScriptTag({ content: axeSource });
      const audit = (what) => axeAudit(other, what);
      const filters = { "filter-type": /^Type$/, "filter-from": /^From$/, "filter-to": /^To$/, "filter-apply": /^Apply$/, "recharge-amount": /^Amount/, "export-csv": /^Download CSV$/, "settings-open": /^Alert settings$/, "sign-out": /^Change token$/, "prices-current-wrap": /^List \S+, version \d+, in effect since /, "limits-kind": /^Scope$/, "limits-window": /^Window$/, "limits-amount": /^Limit/, "limits-add": /^Add limit$/, "limits-save": /^Save limits$/ };
      await expectNamedControls(other, filters, "the wallet");
      await audit("the wallet");

      await openSettings(other);
      await expectNamedControls(other, { ...filters, "settings-threshold": /^Low-balance threshold/, "settings-webhook": /^Webhook URL$/, "settings-save": /^Save settings$/, "settings-rotate": /^Rotate secret$/, "settings-close": /^Close$/ }, "the settings");
      await audit("the settings");

      await other.click("#sign-out");
      await expectVisible(other, "#token-form", true, "the token form");
      await expectNamedControls(other, { "token-input": /^Token$/, "token-submit": /^Open console$/ }, "the token form");
      await audit("the token form");
    });
  });

  await check(7, "an expired token shows the token form; a valid token pasted there shows the wallet", async () => {
    await inOwnContext({ token: EXPIRED_TOKEN, errors: expiredErrors }, async (other) => {
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
    });
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
