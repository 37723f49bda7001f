// DevShare billing console: the caller's wallet, usage, spend limits, prices, records, recharges
// and alert settings, read from the REST API of this origin with the developer's JWT. Vanilla
// ES2020, no dependencies, nothing fetched from anywhere else, no inline code or style attributes
// (the page's CSP forbids them).
"use strict";

const TOKEN_KEY = "billing-console-token";
const API = "/api/v1/billing";
const PAGE_SIZE = 20;
const MICROS_PER_UNIT = 1000000n;
// The service's default alert threshold, used when the user's own cannot be read.
const LOW_BALANCE_MICROS = 1000000n;
const MAX_RECHARGE_MICROS = 1000000000000n;
// What the service accepts of spend limits: 0 ..= 10^15 micros each, at most 20 of them.
const MAX_LIMIT_MICROS = 1000000000000000n;
const MAX_LIMITS = 20;
const POLL_INTERVAL_MS = 1000;
const POLL_LIMIT_MS = 30 * 60 * 1000;
const USAGE_DAYS = 30;
const TOP_APIS = 5;
const SVG_NS = "http://www.w3.org/2000/svg";
const EXPIRED_MESSAGE =
  "Your token is invalid or expired. Please paste a new token to continue.";
const WELCOME_MESSAGE =
  "Paste your API token (JWT) to open the console. It is kept in this browser tab only.";

// --- money: micros as exact integers ----------------------------------------------------------

/**
 * Micros as currency units with 2 decimals, rounded half up (on the magnitude, so -0.005 shows
 * as -0.01), prefixed by the currency code: formatMicros(1234567, "CNY") === "CNY 1.23".
 * Integer (BigInt) arithmetic only; a missing or non-integer value shows as "—".
 */
function formatMicros(micros, currency) {
  let value;
  try {
    value = BigInt(micros);
  } catch (_) {
    return "—";
  }
  const negative = value < 0n;
  const magnitude = negative ? -value : value;
  let cents = magnitude / 10000n;
  if (magnitude % 10000n >= 5000n) cents += 1n;
  const text = `${cents / 100n}.${(cents % 100n).toString().padStart(2, "0")}`;
  const signed = negative && cents !== 0n ? `-${text}` : text;
  return currency ? `${currency} ${signed}` : signed;
}

/**
 * A non-negative amount typed in currency units, as exact micros (string and BigInt arithmetic,
 * never a float): { micros } or { error }, with `example` in the messages.
 */
function parseDecimal(input, empty, negative, example) {
  const text = String(input == null ? "" : input).trim();
  if (text === "") return { error: empty };
  if (/^[-\u2212]/.test(text)) return { error: negative };
  const match = /^\+?(\d*)(?:\.(\d*))?$/.exec(text);
  if (!match || (match[1] === "" && !match[2])) {
    return { error: `Enter a number using digits and at most one decimal point, e.g. ${example}.` };
  }
  const fraction = match[2] || "";
  if (fraction.length > 6) return { error: "Use at most 6 decimals." };
  return { micros: BigInt(match[1] || "0") * MICROS_PER_UNIT + BigInt(fraction.padEnd(6, "0")) };
}

/**
 * A recharge amount typed in currency units, as exact micros: parseUnits("12.5") gives
 * { micros: 12500000n }; an invalid amount gives { error: "…" }.
 */
function parseUnits(input) {
  const parsed = parseDecimal(
    input,
    "Enter the amount to recharge, e.g. 50 or 12.50.",
    "The amount must be positive.",
    "12.50"
  );
  if (parsed.error) return parsed;
  const { micros } = parsed;
  if (micros <= 0n) return { error: "The amount must be positive." };
  if (micros > MAX_RECHARGE_MICROS) return { error: "At most 1,000,000 units per recharge." };
  return { micros };
}

/** An alert threshold typed in currency units, as exact micros; zero is a threshold too. */
function parseThreshold(input) {
  return parseDecimal(
    input,
    "Enter the threshold in currency units, e.g. 5 or 0.50.",
    "The threshold must not be negative.",
    "5.50"
  );
}

/** A spend limit typed in currency units, as exact micros; zero is a limit too (nothing may be spent). */
function parseLimit(input) {
  const parsed = parseDecimal(
    input,
    "Enter the limit in currency units, e.g. 10 or 2.50.",
    "The limit must not be negative.",
    "2.50"
  );
  if (parsed.error) return parsed;
  if (parsed.micros > MAX_LIMIT_MICROS) return { error: "At most 1,000,000,000 units." };
  return parsed;
}

/** Micros as exact currency units, trailing zeros dropped: 1500000 → "1.5", 1 → "0.000001". */
function microsToUnits(micros) {
  const value = toBig(micros);
  const magnitude = value < 0n ? -value : value;
  const fraction = (magnitude % MICROS_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "");
  return `${value < 0n ? "-" : ""}${magnitude / MICROS_PER_UNIT}${fraction ? `.${fraction}` : ""}`;
}

function toBig(value) {
  try {
    return BigInt(value);
  } catch (_) {
    return 0n;
  }
}

/**
 * A price exactly (a price of a token is often a fraction of a cent), with at least 2 decimals:
 * formatPrice(500000, "CNY") === "CNY 0.50", formatPrice(2000, "CNY") === "CNY 0.002".
 */
function formatPrice(micros, currency) {
  const value = toBig(micros);
  const magnitude = value < 0n ? -value : value;
  const digits = (magnitude % MICROS_PER_UNIT).toString().padStart(6, "0");
  const fraction = digits.slice(0, 2) + digits.slice(2).replace(/0+$/, "");
  const text = `${value < 0n ? "-" : ""}${magnitude / MICROS_PER_UNIT}.${fraction}`;
  return currency ? `${currency} ${text}` : text;
}

/** An integer with its thousands grouped, exactly: 1000000 → "1,000,000". */
function groupDigits(value) {
  return toBig(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** A price as it reads: "CNY 1.50 per 1,000,000 output_tokens". */
function priceText(price, currency) {
  return `${formatPrice(price.price_micros, currency)} per ${groupDigits(price.per_units)} ${price.meter}`;
}

// --- time -------------------------------------------------------------------------------------

/** Milliseconds since the epoch of an RFC 3339 instant (fractions beyond milliseconds dropped). */
function parseInstant(text) {
  if (typeof text !== "string") return NaN;
  return Date.parse(text.replace(/(\.\d{3})\d+/, "$1"));
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function pad2(n) {
  return String(n).padStart(2, "0");
}

/** The browser's time zone by its IANA name ("Europe/Berlin"); "" when the browser does not tell. */
function localZoneName() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (_) {
    return "";
  }
}

/** How the page names the browser's time zone in labels. */
function localZoneLabel() {
  return localZoneName() || "your time zone";
}

/** The date and wall-clock time of an instant (ms) in `timeZone`, the browser's when undefined. */
function wallClock(ms, timeZone) {
  const fields = {};
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone,
    hourCycle: "h23",
    year: "numeric",
    month: "numeric",
    day: "numeric",
    hour: "numeric",
    minute: "numeric",
    second: "numeric",
  });
  for (const part of format.formatToParts(ms)) fields[part.type] = part.value;
  return {
    year: Number(fields.year),
    month: Number(fields.month),
    day: Number(fields.day),
    hour: Number(fields.hour) % 24,
    minute: Number(fields.minute),
    second: Number(fields.second),
  };
}

/** A wall clock as "1 Jan 00:00", or "2 Jan 2026 17:00:05" with the year and seconds. */
function formatWallClock(clock, withYearAndSeconds) {
  const date = `${clock.day} ${MONTHS[clock.month - 1]}${withYearAndSeconds ? ` ${clock.year}` : ""}`;
  const time = `${pad2(clock.hour)}:${pad2(clock.minute)}${withYearAndSeconds ? `:${pad2(clock.second)}` : ""}`;
  return `${date} ${time}`;
}

/** An RFC 3339 instant in the browser's time zone: "2 Jan 2026 17:00:05". */
function formatInstant(text) {
  const at = parseInstant(text);
  return Number.isNaN(at) ? (text || "—") : formatWallClock(wallClock(at), true);
}

/** An RFC 3339 instant in the browser's time zone, named: "2 Jan 2026 17:00:05 (Europe/Berlin)". */
function formatInstantNamed(text) {
  return `${formatInstant(text)} (${localZoneLabel()})`;
}

function dateKey(year, month, day) {
  return `${String(year).padStart(4, "0")}-${pad2(month)}-${pad2(day)}`;
}

/** A YYYY-MM-DD date moved by `days` (calendar arithmetic, no time zone involved). */
function addDays(key, days) {
  const [y, m, d] = key.split("-").map(Number);
  const at = new Date(Date.UTC(2000, 0, 1));
  at.setUTCFullYear(y, m - 1, d + days);
  return dateKey(at.getUTCFullYear(), at.getUTCMonth() + 1, at.getUTCDate());
}

/** The billing time zone (an IANA name such as "Asia/Shanghai") the account names, or null. */
function billingZone(account) {
  const zone = account && account.free_quota && account.free_quota.time_zone;
  if (typeof zone !== "string" || zone === "") return null;
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: zone });
    return zone;
  } catch (_) {
    return null; // a zone this browser does not know: its own clock alone is shown
  }
}

/**
 * When something resets at the RFC 3339 `instant`: in the billing time zone the account names,
 * named, then in the browser's time with its zone when that clock reads otherwise, as
 * "Resets 1 Jan 00:00 (Asia/Shanghai) · 31 Dec 17:00 your time (Europe/Berlin)"; in the browser's
 * time alone when the zone is unknown.
 */
function resetsLine(instant, account) {
  const at = parseInstant(instant);
  if (Number.isNaN(at)) return "";
  const zone = localZoneName();
  const localClock = formatWallClock(wallClock(at), false);
  const local = `${localClock} your time${zone ? ` (${zone})` : ""}`;
  const billing = billingZone(account);
  if (billing === null) return `Resets ${local}`;
  const billingClock = formatWallClock(wallClock(at, billing), false);
  const line = `Resets ${billingClock} (${billing})`;
  return billingClock === localClock ? line : `${line} · ${local}`;
}

/** When the free quota resets, as resetsLine says it. */
function resetLine(account) {
  return resetsLine(account && account.free_quota && account.free_quota.resets_at, account);
}

/** Today's date in the billing time zone (the browser's own date when it is unknown). */
function billingToday() {
  const clock = wallClock(Date.now(), billingZone(state.account) || undefined);
  return dateKey(clock.year, clock.month, clock.day);
}

/** An instant at the browser's local midnight of a YYYY-MM-DD date plus `days`, or null. */
function localMidnight(value, days) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  if (!match) return null;
  const at = new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]) + days);
  return Number.isNaN(at.getTime()) ? null : at.toISOString();
}

// --- state and DOM helpers ------------------------------------------------------------------

const state = {
  token: null,
  session: 0, // bumped on every change of token: answers for an older session are dropped
  account: null,
  currency: "",
  // What balance_low compares the balance with: the user's own threshold, else the default.
  threshold: LOW_BALANCE_MICROS,
  busy: 0,
  errorSource: null,
  records: { filters: { type: "", from: "", to: "" }, cursor: null, seq: 0, count: 0 },
  // The alert settings as last read or saved; a signing secret only from the answer that made it.
  settings: { seq: 0, alerts: null, secret: null, writing: false },
  // The spend limits as last read or saved (the API's objects), and the set as edited here
  // ({ scope, window, micros }), sent whole on save; nothing is saved before the set was read.
  limits: { seq: 0, saved: [], draft: [], loaded: false, writing: false },
  usageSeq: 0,
  poll: null,
};

const $ = (id) => document.getElementById(id);

function show(element, visible) {
  element.hidden = !visible;
}

function h(tag, props, children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (name === "text") element.textContent = value;
    else if (name === "className") element.className = value;
    else element.setAttribute(name, value);
  }
  for (const child of children || []) element.append(child);
  return element;
}

function svg(tag, attrs, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function uuid() {
  if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    // Storage refused (privacy mode): the token lives in memory only.
  }
}

// --- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The token was refused: the token form is already shown. */
class Unauthorized extends Error {}

/** The answer belongs to an earlier token: nothing to do with it. */
class Superseded extends Error {}

function setBusy(delta) {
  state.busy = Math.max(0, state.busy + delta);
  show($("loading"), state.busy > 0);
}

/**
 * Calls the API with the token. Resolves with the JSON answer (or the Blob when `blob`); rejects
 * with ApiError, Unauthorized (after showing the token form) or Superseded.
 */
async function api(path, options = {}) {
  const { method = "GET", body, blob = false, quiet = false } = options;
  const session = state.session;
  if (!state.token) throw new Unauthorized("no token");
  const headers = {
    Authorization: `Bearer ${state.token}`,
    Accept: blob ? "text/csv, application/json" : "application/json",
  };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!quiet) setBusy(1);
  try {
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
    } catch (error) {
      throw new ApiError(0, "NETWORK", `The service could not be reached (${error.message}).`);
    }
    if (session !== state.session) throw new Superseded();
    if (response.status === 401) {
      tokenRefused();
      throw new Unauthorized("token refused");
    }
    if (!response.ok) {
      let code = `HTTP_${response.status}`;
      let message = response.statusText || "The request failed.";
      try {
        const answer = await response.json();
        if (answer && answer.error) {
          code = answer.error.code || code;
          message = answer.error.message || message;
        }
      } catch (_) {
        // Not JSON: keep the status.
      }
      throw new ApiError(response.status, code, message);
    }
    const result = blob ? await response.blob() : await response.json();
    if (session !== state.session) throw new Superseded();
    return result;
  } finally {
    if (!quiet) setBusy(-1);
  }
}

/** Whether an error is one to show (not a refused token nor a stale answer). */
function reportable(error) {
  return !(error instanceof Unauthorized || error instanceof Superseded);
}

function showError(error, source) {
  if (!reportable(error)) return;
  const code = error instanceof ApiError ? error.code : "ERROR";
  const status = error instanceof ApiError && error.status ? ` (HTTP ${error.status})` : "";
  $("error-text").textContent = `${code}: ${error.message}${status}`;
  state.errorSource = source;
  show($("error-banner"), true);
}

function clearError(source) {
  if (source === undefined || state.errorSource === source) {
    state.errorSource = null;
    show($("error-banner"), false);
    $("error-text").textContent = "";
  }
}

// --- token ------------------------------------------------------------------------------------

function tokenFromHash() {
  const fragment = location.hash.replace(/^#/, "");
  if (!fragment) return null;
  const token = new URLSearchParams(fragment).get("token");
  return token === null ? null : token;
}

function dropHash() {
  history.replaceState(history.state, "", location.pathname + location.search);
}

function showTokenForm(message, isError) {
  stopPolling();
  state.account = null;
  closeSettings(false);
  show($("console"), false);
  show($("sign-out"), false);
  show($("settings-open"), false);
  $("user-id").textContent = "";
  clearError();
  const note = $("token-message");
  note.textContent = message;
  note.classList.toggle("is-error", Boolean(isError));
  $("token-input").value = "";
  show($("token-form"), true);
  $("token-input").focus();
}

/** Any 401: forget the token and ask for another. */
function tokenRefused() {
  storeToken(null);
  state.token = null;
  state.session += 1;
  showTokenForm(EXPIRED_MESSAGE, true);
}

function startWithToken(raw) {
  const token = String(raw || "").trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    const note = $("token-message");
    note.textContent = "Paste a token first.";
    note.classList.add("is-error");
    return;
  }
  storeToken(token);
  state.token = token;
  state.session += 1;
  state.account = null;
  stopPolling();
  clearError();
  show($("token-form"), false);
  show($("console"), true);
  show($("sign-out"), true);
  show($("settings-open"), true);
  resetView();
  loadAll();
}

function resetView() {
  closeSettings(false);
  show($("order"), false);
  show($("recharge-error"), false);
  show($("low-balance"), false);
  for (const id of ["balance", "available"]) $(id).textContent = "—";
  $("free-text").textContent = "";
  $("free-resets").textContent = "";
  const box = $("usage-chart-box");
  box.replaceChildren(h("p", { id: "usage-placeholder", className: "muted", text: "Loading usage…" }));
  $("top-apis").tBodies[0].replaceChildren();
  resetLimits();
  $("prices-current").textContent = "Loading prices…";
  $("prices-current-box").replaceChildren();
  $("prices-scheduled").replaceChildren();
  show($("prices-scheduled-none"), false);
  $("records").tBodies[0].replaceChildren();
  show($("load-more"), false);
}

async function loadAll() {
  const session = state.session;
  await loadWallet();
  if (session !== state.session) return;
  state.records.filters = readFilters() || { type: "", from: "", to: "" };
  loadRecords(true);
  loadUsage();
  loadLimits();
  loadPrices();
}

// --- wallet -----------------------------------------------------------------------------------

async function loadWallet(minVersion) {
  const query = minVersion == null ? "" : `?min_version=${encodeURIComponent(minVersion)}`;
  try {
    const [account, alerts] = await Promise.all([
      api(`${API}/account${query}`),
      api(`${API}/alerts`).catch(() => null),
    ]);
    if (alerts) state.threshold = toBig(alerts.low_balance_threshold_micros);
    renderWallet(account);
    clearError("wallet");
    return account;
  } catch (error) {
    showError(error, "wallet");
    return null;
  }
}

function renderWallet(account) {
  state.account = account;
  state.currency = account.currency || "";
  const money = (micros) => formatMicros(micros, state.currency);
  $("user-id").textContent = account.user_id || "";
  $("balance").textContent = money(account.balance_micros);
  $("available").textContent = money(account.available_micros);
  $("recharge-currency").textContent = state.currency ? `(${state.currency})` : "";
  $("settings-currency").textContent = state.currency ? `(${state.currency})` : "";
  $("limits-currency").textContent = state.currency ? `(${state.currency})` : "";

  const held = toBig(account.balance_held_micros);
  $("balance-held").textContent = `${money(held)} held by open reservations`;
  show($("balance-held"), held > 0n);

  // As balance_low: at or below the threshold.
  const balance = toBig(account.balance_micros);
  const low = $("low-balance");
  low.textContent =
    `Low balance: at or below your alert threshold of ${money(state.threshold)}. ` +
    "Recharge to keep your API calls running.";
  show(low, balance <= state.threshold);

  const quota = account.free_quota || {};
  const used = toBig(quota.used_micros);
  const granted = toBig(quota.granted_micros);
  let percent = granted > 0n ? (used * 100n) / granted : 0n;
  if (percent < 0n) percent = 0n;
  if (percent > 100n) percent = 100n;
  const bar = $("free-bar");
  bar.style.width = `${percent}%`;
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuetext", `${percent}% of the free quota used`);
  bar.classList.toggle("is-high", percent >= 90n);
  $("free-text").textContent = `${money(used)} / ${money(granted)}`;
  $("free-period").textContent = quota.period ? `(${quota.period})` : "";
  const quotaHeld = toBig(quota.held_micros);
  $("free-held").textContent = `${money(quotaHeld)} held`;
  show($("free-held"), quotaHeld > 0n);
  $("free-resets").textContent = resetLine(account);
  $("wallet-updated").textContent = account.updated_at ? `Updated ${formatInstant(account.updated_at)}` : "";
}

// --- usage ------------------------------------------------------------------------------------

async function loadUsage() {
  const seq = ++state.usageSeq;
  const to = addDays(billingToday(), 1);
  const from = addDays(to, -USAGE_DAYS);
  const range = `from=${from}&to=${to}`;
  try {
    const [byDay, byApi] = await Promise.all([
      api(`${API}/usage?${range}&group_by=day`),
      api(`${API}/usage?${range}&group_by=api`),
    ]);
    if (seq !== state.usageSeq) return;
    renderChart(from, to, byDay.buckets || []);
    renderTopApis(byApi.buckets || []);
    clearError("usage");
  } catch (error) {
    if (seq !== state.usageSeq || !reportable(error)) return;
    showError(error, "usage");
    $("usage-chart-box").replaceChildren(
      h("p", { id: "usage-placeholder", className: "muted", text: "Usage could not be loaded." })
    );
  }
}

/** A stacked bar per day of [from, to): free part below, balance part above. */
function renderChart(from, to, buckets) {
  const byKey = new Map(buckets.map((bucket) => [bucket.key, bucket]));
  const days = [];
  for (let day = from; day < to; day = addDays(day, 1)) days.push(day);

  const width = 960;
  const height = 260;
  const left = 70;
  const right = 12;
  const top = 16;
  const bottom = 30;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const slot = plotWidth / days.length;
  const barWidth = Math.max(2, slot * 0.62);

  let max = 0n;
  const rows = days.map((day) => {
    const bucket = byKey.get(day) || {};
    const free = toBig(bucket.free_micros);
    const balance = toBig(bucket.balance_micros);
    const total = free + balance;
    if (total > max) max = total;
    return { day, free, balance, total, calls: Number(bucket.calls || 0) };
  });

  const chart = svg("svg", {
    id: "usage-chart",
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Daily spend from ${from} to ${addDays(to, -1)}, free quota and balance stacked`,
    "data-from": from,
    "data-to": to,
  });
  const y = (micros) => (max > 0n ? (Number(micros) / Number(max)) * plotHeight : 0);

  // Grid lines and amounts, in the account's currency (named once, top left).
  chart.append(svg("text", { x: 4, y: 11, class: "axis-unit" }, state.currency));
  const ticks = 4;
  for (let i = 0; i <= ticks; i += 1) {
    const value = (max * BigInt(i)) / BigInt(ticks);
    const lineY = top + plotHeight - (max > 0n ? (plotHeight * i) / ticks : 0);
    if (i > 0 && max === 0n) break;
    chart.append(svg("line", { x1: left, x2: width - right, y1: lineY, y2: lineY, class: i === 0 ? "axis" : "grid" }));
    chart.append(svg("text", { x: left - 8, y: lineY + 4, class: "axis-label", "text-anchor": "end" }, formatMicros(value, "")));
  }

  rows.forEach((row, index) => {
    const x = left + index * slot + (slot - barWidth) / 2;
    const group = svg("g", { class: "day", "data-day": row.day });
    group.append(
      svg(
        "title",
        {},
        `${row.day}: ${formatMicros(row.total, state.currency)} ` +
          `(free ${formatMicros(row.free, "")}, balance ${formatMicros(row.balance, "")}), ` +
          `${row.calls} call${row.calls === 1 ? "" : "s"}`
      )
    );
    group.append(svg("rect", { class: "hit", x: left + index * slot, y: top, width: slot, height: plotHeight }));
    let base = top + plotHeight;
    for (const [part, micros] of [["free", row.free], ["balance", row.balance]]) {
      if (micros <= 0n) continue;
      const barHeight = Math.max(1, y(micros));
      base -= barHeight;
      group.append(
        svg("rect", {
          class: `bar bar-${part}`,
          "data-day": row.day,
          "data-part": part,
          x: x.toFixed(2),
          y: base.toFixed(2),
          width: barWidth.toFixed(2),
          height: barHeight.toFixed(2),
        })
      );
    }
    if ((days.length - 1 - index) % 5 === 0) {
      chart.append(
        svg("text", { x: (x + barWidth / 2).toFixed(2), y: height - 10, class: "axis-label", "text-anchor": "middle" }, row.day.slice(5))
      );
    }
    chart.append(group);
  });

  if (max === 0n) {
    chart.append(
      svg("text", { x: left + plotWidth / 2, y: top + plotHeight / 2, class: "chart-empty", "text-anchor": "middle" }, "No charges in the last 30 days")
    );
  }
  const box = $("usage-chart-box");
  box.replaceChildren(chart);
  box.scrollLeft = box.scrollWidth; // on a narrow screen, start at today
}

function renderTopApis(buckets) {
  const sorted = buckets.slice().sort((a, b) => {
    const diff = toBig(b.amount_micros) - toBig(a.amount_micros);
    if (diff !== 0n) return diff > 0n ? 1 : -1;
    return String(a.key) < String(b.key) ? -1 : String(a.key) > String(b.key) ? 1 : 0;
  });
  const top = sorted.slice(0, TOP_APIS);
  const body = $("top-apis").tBodies[0];
  if (top.length === 0) {
    body.replaceChildren(
      h("tr", { id: "top-apis-empty", className: "empty" }, [h("td", { colspan: "3", text: "No API calls in the last 30 days" })])
    );
    return;
  }
  const largest = toBig(top[0].amount_micros);
  body.replaceChildren(
    ...top.map((bucket) => {
      const amount = toBig(bucket.amount_micros);
      const share = largest > 0n ? Number((amount * 1000n) / largest) / 10 : 0;
      const fill = h("span", { className: "share-fill" });
      fill.style.width = `${share}%`;
      return h("tr", { "data-api": bucket.key }, [
        h("td", {}, [h("code", { text: bucket.key })]),
        h("td", { className: "num", text: Number(bucket.calls || 0).toLocaleString() }),
        h("td", { className: "num" }, [
          h("span", { className: "amount", text: formatMicros(bucket.amount_micros, state.currency) }),
          h("span", { className: "share", "aria-hidden": "true" }, [fill]),
        ]),
      ]);
    })
  );
}

// --- prices -----------------------------------------------------------------------------------

async function loadPrices() {
  try {
    renderPrices(await api(`${API}/prices`));
    clearError("prices");
  } catch (error) {
    if (!reportable(error)) return;
    showError(error, "prices");
    $("prices-current").textContent = "Prices could not be loaded.";
  }
}

/** The version in effect (or that none is) and the versions scheduled after it. */
function renderPrices(list) {
  const inEffect = list.version !== null && list.version !== undefined;
  $("prices-current").textContent = inEffect
    ? `List ${list.name}, version ${list.version}, in effect since ${formatInstantNamed(list.effective_from)}`
    : `No version of list ${list.name} is in effect yet.`;
  $("prices-current-box").replaceChildren(
    ...(inEffect ? [priceTable("prices-current-wrap", "prices-current", list.prices || [], list.currency)] : [])
  );
  const scheduled = list.scheduled || [];
  $("prices-scheduled").replaceChildren(...scheduled.map(scheduledVersion));
  show($("prices-scheduled-none"), scheduled.length === 0);
}

function scheduledVersion(version) {
  const titleId = `prices-v${version.version}-title`;
  return h("div", { className: "price-version", "data-version": String(version.version) }, [
    h("h4", { id: titleId, text: `Version ${version.version}, takes effect ${formatInstantNamed(version.effective_from)}` }),
    priceTable(`prices-v${version.version}-wrap`, titleId, version.prices || [], version.currency),
  ]);
}

/**
 * A version's prices, API by API, in a scrollable region named by the line `labelId` (a
 * focusable region, so a narrow screen can scroll it from the keyboard).
 */
function priceTable(id, labelId, prices, currency) {
  const rows = prices.map((price) =>
    h("tr", { "data-api": price.api_id, "data-meter": price.meter }, [
      h("td", {}, [h("code", { text: price.api_id })]),
      h("td", {}, [h("code", { text: price.meter })]),
      h("td", { className: "num", text: priceText(price, currency) }),
    ])
  );
  if (rows.length === 0) rows.push(h("tr", { className: "empty" }, [h("td", { colspan: "3", text: "No prices in this version" })]));
  const head = h("tr", {}, [
    h("th", { scope: "col", text: "API" }),
    h("th", { scope: "col", text: "Meter" }),
    h("th", { scope: "col", className: "num", text: "Price" }),
  ]);
  return h("div", { id, className: "table-wrap", tabindex: "0", role: "region", "aria-labelledby": labelId }, [
    h("table", { className: "data compact" }, [h("thead", {}, [head]), h("tbody", {}, rows)]),
  ]);
}

// --- spend limits -----------------------------------------------------------------------------

/** How the page names a limit: "api:chat.completions per month". */
function limitName(scope, per) {
  return `${scope} per ${per}`;
}

/** The card as before the limits are read: nothing listed, nothing to add to or save. */
function resetLimits() {
  const limits = state.limits;
  limits.seq += 1;
  limits.saved = [];
  limits.draft = [];
  limits.loaded = false;
  limits.writing = false;
  $("limits-save").removeAttribute("aria-disabled");
  $("limits-form").reset();
  showLimitIdField();
  limitsFormError("");
  clearLimitsMessages();
  $("limits-list").replaceChildren();
  $("limits-loading").textContent = "Loading spend limits…";
  show($("limits-loading"), true);
  show($("limits-none"), false);
  setLimitsEnabled(false);
}

function setLimitsEnabled(enabled) {
  for (const id of ["limits-add", "limits-save"]) $(id).disabled = !enabled;
}

function clearLimitsMessages() {
  messageAt("limits-error", "");
  $("limits-status").textContent = "";
}

/** A problem with the limit being added, under the form; `field` ("id" or "amount") is marked. */
function limitsFormError(message, field) {
  messageAt("limits-form-error", message);
  for (const name of ["id", "amount"]) {
    $(`limits-${name}`).setAttribute("aria-invalid", message && name === field ? "true" : "false");
  }
}

/** The id input, named for the scope chosen: an API's or an API key's; none for the account. */
function showLimitIdField() {
  const kind = $("limits-kind").value;
  $("limits-id-label").textContent = kind === "key" ? "API key id" : "API id";
  $("limits-id").placeholder = kind === "key" ? "e.g. key-1" : "e.g. chat.completions";
  show($("limits-id-field"), kind !== "account");
}

async function loadLimits() {
  const limits = state.limits;
  const seq = ++limits.seq;
  try {
    const answer = await api(`${API}/limits`);
    if (seq !== limits.seq) return;
    limitsSaved(answer);
    clearError("limits");
  } catch (error) {
    if (seq !== limits.seq || !reportable(error)) return;
    showError(error, "limits");
    $("limits-loading").textContent = "Spend limits could not be loaded.";
  }
}

/** The set as the service answered it (read or saved): shown, and what is edited from now on. */
function limitsSaved(answer) {
  const limits = state.limits;
  limits.saved = answer.limits || [];
  limits.draft = limits.saved.map((status) => ({
    scope: status.scope,
    window: status.window,
    micros: toBig(status.limit_micros),
  }));
  limits.loaded = true;
  setLimitsEnabled(true);
  renderLimits();
}

/** The saved limit an edited one is, unchanged, or null (added or changed here). */
function savedLimit(limit) {
  const status = state.limits.saved.find((s) => s.scope === limit.scope && s.window === limit.window);
  return status && toBig(status.limit_micros) === limit.micros ? status : null;
}

/** Whether the edited set differs from the saved one (each holds one limit per scope and window). */
function limitsChanged() {
  const { saved, draft } = state.limits;
  return draft.length !== saved.length || draft.some((limit) => savedLimit(limit) === null);
}

/** The edited set: a bar for each saved limit, a line for each added or changed one. */
function renderLimits() {
  const limits = state.limits;
  show($("limits-loading"), false);
  $("limits-list").replaceChildren(
    ...limits.draft.map((limit) => {
      const status = savedLimit(limit);
      return status ? limitRow(status) : pendingLimitRow(limit);
    })
  );
  $("limits-none").textContent = limitsChanged()
    ? "No spend limits left: saving removes every limit."
    : "No spend limits: calls are charged as long as the free quota and the balance allow.";
  show($("limits-none"), limits.draft.length === 0);
}

function limitHead(scope, per, amounts) {
  return h("div", { className: "limit-head" }, [
    h("span", { className: "limit-name" }, [h("code", { text: scope }), ` per ${per}`]),
    h("span", { className: "limit-text", text: amounts }),
  ]);
}

function removeButton(name) {
  return h("button", { type: "button", className: "limit-remove", "aria-label": `Remove the limit ${name}`, text: "Remove" });
}

/**
 * A saved limit as a bar filled by what its current window spent of it (exactly, with BigInt;
 * full for a limit of 0), with what remains and when the window resets, in the billing time zone.
 */
function limitRow(status) {
  const money = (micros) => formatMicros(micros, state.currency);
  const limit = toBig(status.limit_micros);
  const spent = toBig(status.spent_micros);
  let percent = limit > 0n ? (spent * 100n) / limit : 100n;
  if (percent < 0n) percent = 0n;
  if (percent > 100n) percent = 100n;
  const name = limitName(status.scope, status.window);
  const bar = h("div", {
    className: "meter-fill",
    role: "progressbar",
    "aria-label": `Spent of the limit ${name}`,
    "aria-valuemin": "0",
    "aria-valuemax": "100",
    "aria-valuenow": String(percent),
    "aria-valuetext": `${percent}% of the limit spent`,
  });
  bar.style.width = `${percent}%`;
  bar.classList.toggle("is-high", percent >= 90n && percent < 100n);
  bar.classList.toggle("is-full", percent >= 100n);
  return h(
    "li",
    {
      className: "limit",
      "data-scope": status.scope,
      "data-window": status.window,
      "data-saved": "true",
      "data-limit-micros": limit.toString(),
      "data-spent-micros": spent.toString(),
      "data-remaining-micros": toBig(status.remaining_micros).toString(),
      "data-resets-at": status.resets_at,
    },
    [
      // The limit exactly, as it was set; what was spent and remains to the cent.
      limitHead(status.scope, status.window, `${money(spent)} / ${formatPrice(limit, state.currency)}`),
      h("div", { className: "meter" }, [bar]),
      h("div", { className: "limit-foot" }, [
        h("span", { className: "limit-remaining small", text: `${money(status.remaining_micros)} remaining` }),
        h("span", { className: "limit-resets muted small", text: resetsLine(status.resets_at, state.account) }),
        removeButton(name),
      ]),
    ]
  );
}

/** A limit added or changed here: its amount; what its window spent is known once it is saved. */
function pendingLimitRow(limit) {
  return h(
    "li",
    {
      className: "limit is-pending",
      "data-scope": limit.scope,
      "data-window": limit.window,
      "data-saved": "false",
      "data-limit-micros": limit.micros.toString(),
    },
    [
      limitHead(limit.scope, limit.window, `Limit ${formatPrice(limit.micros, state.currency)}`),
      h("div", { className: "limit-foot" }, [
        h("span", { className: "limit-pending small", text: "Not saved yet" }),
        removeButton(limitName(limit.scope, limit.window)),
      ]),
    ]
  );
}

/** After an edit of the set: the list again, and whether there is something to save. */
function limitsEdited(what) {
  messageAt("limits-error", "");
  renderLimits();
  $("limits-status").textContent = limitsChanged()
    ? `${what}; not saved yet.`
    : `${what}; the limits are as saved.`;
}

/** Adds the form's limit to the edited set, or changes the one of its scope and window. */
function addLimit(event) {
  event.preventDefault();
  const limits = state.limits;
  if (!limits.loaded || limits.writing) return;
  const kind = $("limits-kind").value;
  let scope = "account";
  if (kind !== "account") {
    // Which ids are valid the service says when the set is saved; its refusal shows here.
    const id = $("limits-id").value.trim();
    if (id === "") {
      limitsFormError(kind === "key" ? "Enter the API key's id." : "Enter the API's id.", "id");
      $("limits-id").focus();
      return;
    }
    scope = `${kind}:${id}`;
  }
  const parsed = parseLimit($("limits-amount").value);
  if (parsed.error) {
    limitsFormError(parsed.error, "amount");
    $("limits-amount").focus();
    return;
  }
  const per = $("limits-window").value;
  const at = limits.draft.findIndex((limit) => limit.scope === scope && limit.window === per);
  if (at < 0 && limits.draft.length >= MAX_LIMITS) {
    limitsFormError(`At most ${MAX_LIMITS} limits: remove one first.`, "");
    return;
  }
  const limit = { scope, window: per, micros: parsed.micros };
  if (at < 0) limits.draft.push(limit);
  else limits.draft[at] = limit;
  limitsFormError("");
  $("limits-id").value = "";
  $("limits-amount").value = "";
  limitsEdited(`${limitName(scope, per)} ${at < 0 ? "added" : "changed"}`);
}

function removeLimit(scope, per) {
  const limits = state.limits;
  if (limits.writing) return;
  limits.draft = limits.draft.filter((limit) => !(limit.scope === scope && limit.window === per));
  limitsEdited(`${limitName(scope, per)} removed`);
  $("limits-save").focus(); // the button pressed is gone with its line
}

/**
 * Saves the edited set whole (PUT) and shows the limits as the service answers them; a refusal
 * shows in the card, the edited set and the form kept as they are to be corrected.
 */
async function saveLimits() {
  const limits = state.limits;
  if (!limits.loaded || limits.writing) return;
  clearLimitsMessages();
  // Written by hand so the micros go out as exact integers, however large.
  const each = limits.draft.map(
    (limit) =>
      `{"scope":${JSON.stringify(limit.scope)},"window":${JSON.stringify(limit.window)},"limit_micros":${limit.micros.toString()}}`
  );
  const body = `{"limits":[${each.join(",")}]}`;
  const seq = limits.seq;
  const button = $("limits-save");
  limits.writing = true;
  button.setAttribute("aria-disabled", "true");
  try {
    const saved = await api(`${API}/limits`, { method: "PUT", body });
    if (seq !== limits.seq) return;
    limitsSaved(saved);
    $("limits-status").textContent = "Saved.";
  } catch (error) {
    if (seq !== limits.seq || !reportable(error)) return;
    messageAt(
      "limits-error",
      error instanceof ApiError && error.status === 400
        ? `The service refused the limits: ${error.message}`
        : `The limits could not be saved: ${describe(error)}`
    );
  } finally {
    limits.writing = false;
    button.removeAttribute("aria-disabled");
  }
}

// --- records ----------------------------------------------------------------------------------

/** The filters as the inputs say, as API parameters; null (and a message) when they are wrong. */
function readFilters() {
  const type = $("filter-type").value;
  const fromValue = $("filter-from").value;
  const toValue = $("filter-to").value;
  const from = fromValue ? localMidnight(fromValue, 0) : "";
  const to = toValue ? localMidnight(toValue, 1) : "";
  let problem = "";
  if (from === null || to === null) problem = "Enter dates as YYYY-MM-DD.";
  else if (from && to && Date.parse(from) >= Date.parse(to)) problem = "The From date must not be after the To date.";
  $("filter-error").textContent = problem;
  show($("filter-error"), Boolean(problem));
  return problem ? null : { type, from, to };
}

function filterQuery(filters) {
  const parts = [];
  for (const name of ["type", "from", "to"]) {
    if (filters[name]) parts.push(`${name}=${encodeURIComponent(filters[name])}`);
  }
  return parts.join("&");
}

function placeholderRow(text, id) {
  return h("tr", { id, className: "empty" }, [h("td", { colspan: "8", text })]);
}

function recordRow(record) {
  const money = (micros) => formatMicros(micros, state.currency);
  const reference = record.api_id || record.order_no || record.request_id || "—";
  const details = [
    record.api_id && `API ${record.api_id}`,
    record.order_no && `order ${record.order_no}`,
    record.request_id && `request ${record.request_id}`,
    record.period && `period ${record.period}`,
  ].filter(Boolean);
  return h("tr", { "data-record-id": record.record_id, "data-type": record.type }, [
    h("td", { className: "nowrap", title: record.created_at, text: formatInstant(record.created_at) }),
    h("td", {}, [h("span", { className: `badge badge-${record.type}`, text: record.type })]),
    h("td", { className: "num", text: money(record.amount_micros) }),
    h("td", { className: "num", text: money(record.free_micros) }),
    h("td", { className: "num", text: money(record.balance_micros) }),
    h("td", { className: "num", text: money(record.balance_after_micros) }),
    h("td", { className: "ref", title: details.join(", ") || undefined }, [h("code", { text: reference })]),
    usageCell(record),
  ]);
}

/** What a priced record used, meter by meter, and the list version that priced it; empty for an amount. */
function usageCell(record) {
  if (!Array.isArray(record.usage)) return h("td", { className: "usage" });
  const used = record.usage.map((line) => `${line.meter} ${groupDigits(line.quantity)}`).join(" · ");
  return h("td", { className: "usage" }, [
    h("span", { className: "usage-lines", text: used }),
    h("span", { className: "usage-price muted small", text: `${record.price_list} v${record.price_version}` }),
  ]);
}

/** The first page (`reset`) or the next one, with the filters last applied. */
async function loadRecords(reset, minVersion) {
  const records = state.records;
  const body = $("records").tBodies[0];
  const more = $("load-more");
  if (reset) {
    records.seq += 1;
    records.cursor = null;
    records.count = 0;
    body.replaceChildren(placeholderRow("Loading records…", "records-loading"));
    show(more, false);
  }
  const seq = records.seq;
  const parts = [`limit=${PAGE_SIZE}`];
  const filters = filterQuery(records.filters);
  if (filters) parts.push(filters);
  if (!reset && records.cursor) parts.push(`cursor=${encodeURIComponent(records.cursor)}`);
  if (minVersion != null) parts.push(`min_version=${encodeURIComponent(minVersion)}`);
  more.disabled = true;
  more.textContent = "Loading…";
  try {
    const page = await api(`${API}/records?${parts.join("&")}`);
    if (seq !== records.seq) return;
    const loading = $("records-loading");
    if (loading) loading.remove();
    const rows = (page.records || []).map(recordRow);
    body.append(...rows);
    records.count += rows.length;
    if (records.count === 0) body.replaceChildren(placeholderRow("No records", "records-empty"));
    records.cursor = page.next_cursor || null;
    show(more, Boolean(records.cursor));
    clearError("records");
  } catch (error) {
    if (seq !== records.seq || !reportable(error)) return;
    const loading = $("records-loading");
    if (loading) loading.replaceWith(placeholderRow("Records could not be loaded.", "records-failed"));
    showError(error, "records");
  } finally {
    if (seq === records.seq) {
      more.disabled = false;
      more.textContent = "Load more";
    }
  }
}

function applyFilters() {
  const filters = readFilters();
  if (!filters) return;
  state.records.filters = filters;
  loadRecords(true);
}

/** The CSV of every record the applied filters select, downloaded through a Blob URL. */
async function exportCsv() {
  const button = $("export-csv");
  const query = filterQuery(state.records.filters);
  button.disabled = true;
  button.textContent = "Preparing…";
  try {
    const blob = await api(`${API}/records/export${query ? `?${query}` : ""}`, { blob: true });
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: "records.csv", className: "offscreen" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    clearError("export");
  } catch (error) {
    showError(error, "export");
  } finally {
    button.disabled = false;
    button.textContent = "Download CSV";
  }
}

// --- recharge ---------------------------------------------------------------------------------

function rechargeError(message) {
  const element = $("recharge-error");
  element.textContent = message || "";
  show(element, Boolean(message));
  $("recharge-amount").setAttribute("aria-invalid", message ? "true" : "false");
}

async function submitRecharge(event) {
  event.preventDefault();
  const parsed = parseUnits($("recharge-amount").value);
  if (parsed.error) {
    rechargeError(parsed.error);
    return;
  }
  rechargeError("");
  const button = $("recharge-submit");
  const versionBefore = state.account ? state.account.version : null;
  button.disabled = true;
  try {
    const order = await api(`${API}/recharge`, {
      method: "POST",
      body: JSON.stringify({
        amount_micros: Number(parsed.micros), // at most 10^12: exact as a JSON number
        channel: "console",
        idempotency_key: uuid(),
      }),
    });
    clearError("recharge");
    $("recharge-amount").value = "";
    renderOrder(order);
    startPolling(order.order_no, versionBefore);
  } catch (error) {
    showError(error, "recharge");
  } finally {
    button.disabled = false;
  }
}

function renderOrder(order) {
  const status = String(order.status || "");
  $("order-no").textContent = order.order_no;
  $("order-amount").textContent = formatMicros(order.amount_micros, state.currency);
  const badge = $("order-status");
  badge.textContent = status;
  badge.className = `status status-${status.toLowerCase()}`;
  const notes = {
    PENDING: "Waiting for the payment; checking every second.",
    PAID: order.paid_at ? `Paid ${formatInstant(order.paid_at)}. Your balance is updated.` : "Paid. Your balance is updated.",
    FAILED: "The payment failed. No money was taken; you can start a new recharge.",
    EXPIRED: "The order expired before it was paid. You can start a new recharge.",
  };
  $("order-note").textContent = notes[status] || "";
  show($("order"), true);
}

function startPolling(orderNo, versionBefore) {
  stopPolling();
  const poll = { orderNo, versionBefore, deadline: Date.now() + POLL_LIMIT_MS, timer: null };
  state.poll = poll;
  poll.timer = setTimeout(() => pollOrder(poll), POLL_INTERVAL_MS);
}

function stopPolling() {
  if (state.poll) clearTimeout(state.poll.timer);
  state.poll = null;
}

async function pollOrder(poll) {
  if (state.poll !== poll) return;
  if (Date.now() > poll.deadline) {
    state.poll = null;
    $("order-note").textContent = "Stopped checking after 30 minutes; reload the page to see the latest status.";
    return;
  }
  try {
    const order = await api(`${API}/recharge/orders/${encodeURIComponent(poll.orderNo)}`, { quiet: true });
    if (state.poll !== poll) return;
    renderOrder(order);
    clearError("order");
    if (order.status === "PENDING") {
      poll.timer = setTimeout(() => pollOrder(poll), POLL_INTERVAL_MS);
      return;
    }
    state.poll = null;
    if (order.status === "PAID") await refreshAfterPayment(poll.versionBefore);
  } catch (error) {
    if (state.poll !== poll || !reportable(error)) return;
    showError(error, "order");
    poll.timer = setTimeout(() => pollOrder(poll), POLL_INTERVAL_MS);
  }
}

/** The wallet, records and usage once a recharge is paid, at least as new as the payment. */
async function refreshAfterPayment(versionBefore) {
  const session = state.session;
  const minVersion = typeof versionBefore === "number" ? versionBefore + 1 : null;
  let account = await loadWallet(minVersion);
  for (let tries = 0; account && minVersion !== null && account.version < minVersion && tries < 5; tries += 1) {
    await delay(POLL_INTERVAL_MS);
    if (session !== state.session) return;
    account = await loadWallet(minVersion);
  }
  if (session !== state.session) return;
  loadRecords(true, minVersion);
  loadUsage();
}

// --- alert settings -------------------------------------------------------------------------

const SETTINGS_FIELDS = {
  low_balance_threshold_micros: "threshold",
  webhook_url: "webhook",
};

function openSettings() {
  show($("settings"), true);
  $("settings-open").setAttribute("aria-expanded", "true");
  $("settings-title").focus();
  loadSettings();
}

/** Hides the settings (and forgets a secret shown there); `refocus` returns to their button. */
function closeSettings(refocus) {
  state.settings.seq += 1;
  state.settings.secret = null;
  renderSecret();
  clearSettingsMessages();
  show($("settings"), false);
  $("settings-open").setAttribute("aria-expanded", "false");
  if (refocus) $("settings-open").focus();
}

/**
 * Marks a settings button busy while its request runs, without disabling it: a disabled button
 * would drop the keyboard focus. Returns false when another write is under way.
 */
function startWrite(button) {
  if (state.settings.writing) return false;
  state.settings.writing = true;
  button.setAttribute("aria-disabled", "true");
  return true;
}

function endWrite(button) {
  state.settings.writing = false;
  button.removeAttribute("aria-disabled");
}

function setSettingsBusy(busy) {
  for (const id of ["settings-threshold", "settings-webhook", "settings-save", "settings-rotate"]) $(id).disabled = busy;
  show($("settings-loading"), busy);
}

function fieldError(field, message) {
  const element = $(`settings-${field}-error`);
  element.textContent = message || "";
  show(element, Boolean(message));
  $(`settings-${field}`).setAttribute("aria-invalid", message ? "true" : "false");
}

function messageAt(id, message) {
  const element = $(id);
  element.textContent = message || "";
  show(element, Boolean(message));
}

function clearSettingsMessages() {
  fieldError("threshold", "");
  fieldError("webhook", "");
  messageAt("settings-error", "");
  messageAt("settings-rotate-error", "");
  $("settings-status").textContent = "";
}

/** The settings as read: the fields, what the threshold is, whether a secret is set. */
async function loadSettings() {
  const seq = ++state.settings.seq;
  state.settings.secret = null;
  renderSecret();
  clearSettingsMessages();
  setSettingsBusy(true);
  try {
    const alerts = await api(`${API}/alerts`);
    if (seq !== state.settings.seq) return;
    state.settings.alerts = alerts;
    renderSettingsFields(alerts);
    renderSecret();
    setSettingsBusy(false);
  } catch (error) {
    if (seq !== state.settings.seq || !reportable(error)) return;
    show($("settings-loading"), false);
    messageAt("settings-error", `The settings could not be loaded: ${describe(error)}`);
  }
}

function describe(error) {
  const code = error instanceof ApiError ? error.code : "ERROR";
  const status = error instanceof ApiError && error.status ? ` (HTTP ${error.status})` : "";
  return `${code}: ${error.message}${status}`;
}

function renderSettingsFields(alerts) {
  const threshold = toBig(alerts.low_balance_threshold_micros);
  $("settings-currency").textContent = state.currency ? `(${state.currency})` : "";
  $("settings-threshold").value = microsToUnits(threshold);
  $("settings-threshold-hint").textContent = alerts.threshold_set
    ? `Your own threshold, exact to the micro. The warning on this page follows it too.`
    : `The service's default (${formatMicros(threshold, state.currency)}); saving makes it your own.`;
  $("settings-webhook").value = alerts.webhook_url || "";
}

function renderSecret() {
  const alerts = state.settings.alerts;
  const secret = state.settings.secret;
  $("settings-secret").textContent = secret || "";
  show($("settings-secret-new"), Boolean(secret));
  let text = "";
  if (secret) text = "A new signing secret is set:";
  else if (alerts && alerts.signing_secret_set) text = "A signing secret is set. It was shown once, when it was made.";
  else if (alerts) text = "No signing secret yet: one is made, and shown once, when you first set a webhook.";
  $("settings-secret-state").textContent = text;
}

/** What the threshold now is, for the low-balance warning of the wallet. */
function thresholdSaved(micros) {
  state.threshold = toBig(micros);
  if (state.account) renderWallet(state.account);
}

/**
 * An error of a save or a rotation: a refused field's message next to that field (the API names
 * them, "webhook_url: must be …", "; " between them), anything else at `generalId`.
 */
function settingsFailed(error, generalId) {
  if (!reportable(error)) return;
  const general = [];
  if (error instanceof ApiError && error.status === 400) {
    for (const part of String(error.message).split("; ")) {
      const match = /^([a-z_]+): (.+)$/s.exec(part);
      const field = match && SETTINGS_FIELDS[match[1]];
      if (field) fieldError(field, match[2].charAt(0).toUpperCase() + match[2].slice(1));
      else general.push(part);
    }
    if (general.length > 0) messageAt(generalId, `The service refused the settings: ${general.join("; ")}`);
  } else {
    messageAt(generalId, `The settings could not be saved: ${describe(error)}`);
  }
  const invalid = document.querySelector('#settings [aria-invalid="true"]');
  if (invalid) invalid.focus();
}

/** Saves the whole setting (PUT): the threshold as typed, exactly, and the webhook or none. */
async function saveSettings(event) {
  event.preventDefault();
  if (state.settings.writing) return;
  clearSettingsMessages();
  const parsed = parseThreshold($("settings-threshold").value);
  if (parsed.error) {
    fieldError("threshold", parsed.error);
    $("settings-threshold").focus();
    return;
  }
  const url = $("settings-webhook").value.trim();
  // Written by hand so the micros go out as the exact integer, however large.
  const body = `{"low_balance_threshold_micros":${parsed.micros.toString()},"webhook_url":${JSON.stringify(url === "" ? null : url)}}`;
  const seq = state.settings.seq;
  const button = $("settings-save");
  if (!startWrite(button)) return;
  try {
    const saved = await api(`${API}/alerts`, { method: "PUT", body });
    if (seq !== state.settings.seq) return;
    const before = state.settings.alerts || {};
    state.settings.alerts = {
      low_balance_threshold_micros: saved.low_balance_threshold_micros,
      threshold_set: true,
      webhook_url: saved.webhook_url,
      signing_secret_set: Boolean(before.signing_secret_set || saved.signing_secret),
    };
    if (saved.signing_secret) state.settings.secret = saved.signing_secret;
    renderSettingsFields(state.settings.alerts);
    renderSecret();
    thresholdSaved(saved.low_balance_threshold_micros);
    $("settings-status").textContent = saved.signing_secret
      ? "Saved. A signing secret was made: copy it now."
      : "Saved.";
  } catch (error) {
    if (seq === state.settings.seq) settingsFailed(error, "settings-error");
  } finally {
    endWrite(button);
  }
}

/** A new signing secret (PATCH with the rotation only: the threshold and webhook stay). */
async function rotateSecret() {
  const seq = state.settings.seq;
  const button = $("settings-rotate");
  if (!startWrite(button)) return;
  clearSettingsMessages();
  try {
    const saved = await api(`${API}/alerts`, { method: "PATCH", body: '{"rotate_signing_secret":true}' });
    if (seq !== state.settings.seq) return;
    state.settings.alerts = { ...(state.settings.alerts || {}), signing_secret_set: true };
    state.settings.secret = saved.signing_secret || null;
    renderSecret();
    $("settings-status").textContent = "A new signing secret was made: copy it now.";
  } catch (error) {
    if (seq === state.settings.seq) settingsFailed(error, "settings-rotate-error");
  } finally {
    endWrite(button);
  }
}

// --- start ------------------------------------------------------------------------------------

/** Where the page says which time zone its times and dates are in. */
function labelZones() {
  const zone = localZoneLabel();
  $("records-time").textContent = `Time (${zone})`;
  $("filter-zone").textContent = `Whole days in your time zone (${zone}), both included.`;
  $("foot").textContent =
    "Amounts are exact to the micro; shown rounded to 2 decimals, prices in full. " +
    `Times in your time zone (${zone}); the free quota's and the spend limits' resets also in the ` +
    "billing time zone, named; usage days, the free quota's month and the spend limits' days and " +
    "months in the billing time zone.";
}

function init() {
  labelZones();
  $("token-submit").addEventListener("click", () => startWithToken($("token-input").value));
  $("token-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) startWithToken($("token-input").value);
  });
  $("sign-out").addEventListener("click", () => {
    storeToken(null);
    state.token = null;
    state.session += 1;
    showTokenForm(WELCOME_MESSAGE, false);
  });
  $("error-close").addEventListener("click", () => clearError());
  $("settings-open").addEventListener("click", () => {
    if ($("settings").hidden) openSettings();
    else closeSettings(true);
  });
  $("settings-close").addEventListener("click", () => closeSettings(true));
  $("settings").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeSettings(true);
  });
  $("settings-form").addEventListener("submit", saveSettings);
  $("settings-rotate").addEventListener("click", rotateSecret);
  $("settings-threshold").addEventListener("input", () => fieldError("threshold", ""));
  $("settings-webhook").addEventListener("input", () => fieldError("webhook", ""));
  $("filter-apply").addEventListener("click", applyFilters);
  $("load-more").addEventListener("click", () => loadRecords(false));
  $("export-csv").addEventListener("click", exportCsv);
  $("recharge-form").addEventListener("submit", submitRecharge);
  $("recharge-amount").addEventListener("input", () => rechargeError(""));
  $("limits-form").addEventListener("submit", addLimit);
  $("limits-kind").addEventListener("change", () => {
    limitsFormError("");
    showLimitIdField();
  });
  $("limits-id").addEventListener("input", () => limitsFormError(""));
  $("limits-amount").addEventListener("input", () => limitsFormError(""));
  $("limits-list").addEventListener("click", (event) => {
    const button = event.target.closest("button.limit-remove");
    const row = button && button.closest("li[data-scope]");
    if (row) removeLimit(row.getAttribute("data-scope"), row.getAttribute("data-window"));
  });
  $("limits-save").addEventListener("click", saveLimits);
  window.addEventListener("hashchange", () => {
    const token = tokenFromHash();
    if (token === null) return;
    dropHash();
    startWithToken(token);
  });

  const fromHash = tokenFromHash();
  if (fromHash !== null) dropHash();
  const token = fromHash || storedToken();
  if (token) startWithToken(token);
  else showTokenForm(WELCOME_MESSAGE, false);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
