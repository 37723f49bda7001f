// The developer console: the caller's wallet, usage, records and recharges, from the public
// REST API of this origin with the developer's JWT. No dependencies, nothing fetched elsewhere.
"use strict";

const TOKEN_KEY = "billing-console-token";
const PAGE_SIZE = 20;
// The service's default alert threshold, when the user's own cannot be read.
const LOW_BALANCE_MICROS = 1000000n;
const MAX_RECHARGE_MICROS = 1000000000000n;
const SVG = "http://www.w3.org/2000/svg";

const state = { token: null, currency: "", cursor: null, filters: "", order: null, poll: null };
const $ = (id) => document.getElementById(id);

// --- money: micros as exact integers -------------------------------------------------------

/** Micros as currency units with two decimals, rounded half up (away from zero). */
function formatMicros(micros, currency) {
  let value = BigInt(micros);
  const negative = value < 0n;
  if (negative) value = -value;
  const cents = (value + 5000n) / 10000n;
  const units = (cents / 100n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const text = `${negative && cents > 0n ? "-" : ""}${units}.${(cents % 100n).toString().padStart(2, "0")}`;
  return currency ? `${currency} ${text}` : text;
}

/** Currency units typed by a person ("12.5") as micros, or null when it is not an amount. */
function parseUnits(text) {
  const match = /^\s*(\d{1,7})(?:\.(\d{1,6}))?\s*$/.exec(text);
  if (!match) return null;
  const micros = BigInt(match[1]) * 1000000n + BigInt((match[2] || "").padEnd(6, "0") || "0");
  return micros > 0n && micros <= MAX_RECHARGE_MICROS ? micros : null;
}

// --- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) },
  });
  if (response.ok) return options.raw ? response : response.json();
  let code = "ERROR";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    code = body.error.code;
    message = body.error.message;
  } catch (_) {
    // Not the API's JSON error: keep the status line.
  }
  throw new ApiError(response.status, code, message);
}

/** Shows an error: a 401 asks for a new token, anything else goes to the banner. */
function fail(error) {
  if (error instanceof ApiError && error.status === 401) {
    askForToken("Your token is invalid or has expired: paste a new one.");
    return;
  }
  const banner = $("error-banner");
  banner.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : `Error: ${error.message}`;
  banner.hidden = false;
}

// --- token -----------------------------------------------------------------------------------

function askForToken(message) {
  stopPolling();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("console").hidden = true;
  $("token-form").hidden = false;
  $("token-message").textContent = message;
  $("token-message").className = message.includes("expired") ? "error" : "muted";
}

function useToken(token) {
  state.token = token.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token-form").hidden = true;
  $("error-banner").hidden = true;
  loadAll();
}

// --- wallet ----------------------------------------------------------------------------------

async function loadWallet() {
  const [account, alerts] = await Promise.all([
    api("/api/v1/billing/account"),
    // The threshold balance_low fires at: the user's own, else the service's default.
    api("/api/v1/billing/alerts").catch(() => null),
  ]);
  state.currency = account.currency;
  const money = (micros) => formatMicros(micros, account.currency);
  const quota = account.free_quota;
  $("user-id").textContent = account.user_id;
  $("balance").textContent = money(account.balance_micros);
  $("available").textContent = money(account.available_micros);
  const held = BigInt(account.balance_held_micros) + BigInt(quota.held_micros);
  $("balance-held").hidden = held === 0n;
  $("balance-held").textContent = `${money(held)} held by open reservations`;
  const granted = BigInt(quota.granted_micros);
  const percent = granted > 0n ? Number((BigInt(quota.used_micros) * 100n) / granted) : 0;
  $("free-bar").style.width = `${percent}%`;
  $("free-bar").setAttribute("aria-valuenow", String(percent));
  $("free-text").textContent = `${money(quota.used_micros)} used of ${money(quota.granted_micros)}`;
  $("free-resets").textContent = `· resets ${new Date(quota.resets_at).toLocaleString()}`;
  const threshold = alerts ? BigInt(alerts.low_balance_threshold_micros) : LOW_BALANCE_MICROS;
  const low = $("low-balance");
  low.textContent =
    `Your balance is at or below your alert threshold of ${money(threshold)}: ` +
    "recharge to keep your calls going.";
  low.hidden = BigInt(account.balance_micros) > threshold;
}

// --- usage -----------------------------------------------------------------------------------

/** `YYYY-MM-DD` of a UTC date, and the day after it. */
const isoDay = (date) => date.toISOString().slice(0, 10);
const nextDay = (day) => isoDay(new Date(Date.parse(`${day}T00:00:00Z`) + 86400000));

async function loadUsage() {
  const [days, apis] = await Promise.all([
    api("/api/v1/billing/usage?group_by=day"),
    api("/api/v1/billing/usage?group_by=api"),
  ]);
  drawChart(days.buckets);
  const body = $("top-apis").tBodies[0];
  body.replaceChildren();
  const top = [...apis.buckets]
    .sort((a, b) => (BigInt(b.amount_micros) > BigInt(a.amount_micros) ? 1 : -1))
    .slice(0, 5);
  for (const bucket of top) {
    body.append(row([bucket.key, String(bucket.calls), formatMicros(bucket.amount_micros, state.currency)], [1, 2]));
  }
  if (top.length === 0) body.append(row(["No charges in the last 30 days", "", ""]));
}

/** Thirty days ending with the latest day the server counts (the billing zone's today, or the
 * newest bucket), free and balance stacked per day. */
function drawChart(buckets) {
  const byDay = new Map(buckets.map((b) => [b.key, b]));
  const today = isoDay(new Date());
  let last = buckets.reduce((max, b) => (b.key > max ? b.key : max), today);
  const days = [];
  for (let i = 0; i < 30; i += 1) {
    days.unshift(last);
    last = isoDay(new Date(Date.parse(`${last}T00:00:00Z`) - 86400000));
  }
  const max = days.reduce((m, d) => {
    const b = byDay.get(d);
    return b && BigInt(b.amount_micros) > m ? BigInt(b.amount_micros) : m;
  }, 0n);
  const width = 900;
  const height = 180;
  const slot = width / days.length;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("id", "usage-chart");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Charges per day, free quota and balance stacked");
  const scale = (micros) => (max === 0n ? 0 : Number((BigInt(micros) * BigInt(height * 1000)) / max) / 1000);
  days.forEach((day, i) => {
    const bucket = byDay.get(day);
    if (bucket) {
      const free = scale(bucket.free_micros);
      const balance = scale(bucket.balance_micros);
      svg.append(bar(i * slot + 3, height - free, slot - 6, free, "free", day, bucket.free_micros));
      svg.append(bar(i * slot + 3, height - free - balance, slot - 6, balance, "balance", day, bucket.balance_micros));
    }
    if (i % 5 === 4 || i === days.length - 1) {
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", String(i * slot + slot / 2));
      label.setAttribute("y", String(height + 14));
      label.setAttribute("text-anchor", "middle");
      label.textContent = day.slice(5);
      svg.append(label);
    }
  });
  $("usage-chart-box").replaceChildren(svg);
}

function bar(x, y, width, height, part, day, micros) {
  const rect = document.createElementNS(SVG, "rect");
  for (const [name, value] of Object.entries({ x, y, width, height })) rect.setAttribute(name, String(value));
  rect.setAttribute("class", part);
  rect.setAttribute("data-day", day);
  const title = document.createElementNS(SVG, "title");
  title.textContent = `${day} ${part}: ${formatMicros(micros, state.currency)}`;
  rect.append(title);
  return rect;
}

// --- records ---------------------------------------------------------------------------------

/** The filters as query parameters; the dates are local days, `to` inclusive. */
function recordFilters() {
  const params = new URLSearchParams();
  const type = $("filter-type").value;
  if (type) params.set("type", type);
  const midnight = (value) => {
    const [y, m, d] = value.split("-").map(Number);
    return new Date(y, m - 1, d);
  };
  if ($("filter-from").value) params.set("from", midnight($("filter-from").value).toISOString());
  if ($("filter-to").value) {
    const end = midnight($("filter-to").value);
    end.setDate(end.getDate() + 1);
    params.set("to", end.toISOString());
  }
  return params;
}

function row(cells, numeric = []) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric.includes(i)) td.className = "num";
    tr.append(td);
  });
  return tr;
}

async function loadRecords(more) {
  const params = more ? new URLSearchParams(state.filters) : recordFilters();
  if (!more) state.filters = params.toString();
  params.set("limit", String(PAGE_SIZE));
  if (more && state.cursor) params.set("cursor", state.cursor);
  const page = await api(`/api/v1/billing/records?${params}`);
  const body = $("records").tBodies[0];
  if (!more) body.replaceChildren();
  const money = (micros) => formatMicros(micros, state.currency);
  for (const r of page.records) {
    const tr = row(
      [
        new Date(r.created_at).toLocaleString(),
        r.type,
        money(r.amount_micros),
        money(r.free_micros),
        money(r.balance_micros),
        money(r.balance_after_micros),
        r.api_id || r.order_no || r.request_id || `period ${r.period}`,
      ],
      [2, 3, 4, 5],
    );
    tr.dataset.recordId = r.record_id;
    body.append(tr);
  }
  state.cursor = page.next_cursor;
  $("load-more").hidden = !page.next_cursor;
  $("records-empty").hidden = body.rows.length > 0;
}

async function exportCsv() {
  const response = await api(`/api/v1/billing/records/export?${recordFilters()}`, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = "records.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// --- recharge --------------------------------------------------------------------------------

function stopPolling() {
  if (state.poll) clearInterval(state.poll);
  state.poll = null;
}

async function recharge() {
  const error = $("recharge-error");
  const micros = parseUnits($("recharge-amount").value);
  if (micros === null) {
    error.textContent = "Enter a positive amount with at most 6 decimals, up to 1,000,000.";
    error.hidden = false;
    return;
  }
  error.hidden = true;
  $("recharge-submit").disabled = true;
  try {
    const order = await api("/api/v1/billing/recharge", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      // The micros fit a JavaScript number exactly: at most 10^12.
      body: JSON.stringify({ amount_micros: Number(micros), channel: "console", idempotency_key: crypto.randomUUID() }),
    });
    showOrder(order);
    followOrder(order.order_no);
  } catch (e) {
    fail(e);
  } finally {
    $("recharge-submit").disabled = false;
  }
}

function showOrder(order) {
  $("order").hidden = false;
  $("order-no").textContent = order.order_no;
  $("order-status").textContent = order.status;
}

/** Polls the order every second until it is no longer PENDING (for at most 30 minutes). */
function followOrder(orderNo) {
  stopPolling();
  const until = Date.now() + 30 * 60 * 1000;
  state.poll = setInterval(async () => {
    if (Date.now() > until) return stopPolling();
    try {
      const order = await api(`/api/v1/billing/recharge/orders/${encodeURIComponent(orderNo)}`);
      showOrder(order);
      if (order.status !== "PENDING") {
        stopPolling();
        if (order.status === "PAID") await Promise.all([loadWallet(), loadRecords(false)]);
      }
    } catch (e) {
      stopPolling();
      fail(e);
    }
  }, 1000);
}

// --- start -----------------------------------------------------------------------------------

async function loadAll() {
  $("loading").hidden = false;
  try {
    await loadWallet();
    await Promise.all([loadUsage(), loadRecords(false)]);
    $("console").hidden = false;
  } catch (e) {
    fail(e);
  } finally {
    $("loading").hidden = true;
  }
}

const guarded = (action) => () => action().catch(fail);

document.addEventListener("DOMContentLoaded", () => {
  $("token-submit").addEventListener("click", () => {
    if ($("token-input").value.trim()) useToken($("token-input").value);
  });
  $("filter-apply").addEventListener("click", guarded(() => loadRecords(false)));
  $("load-more").addEventListener("click", guarded(() => loadRecords(true)));
  $("export-csv").addEventListener("click", guarded(exportCsv));
  $("recharge-submit").addEventListener("click", recharge);

  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) history.replaceState(null, "", location.pathname + location.search);
  const token = fragment || sessionStorage.getItem(TOKEN_KEY);
  if (token) useToken(token);
  else askForToken("Paste your API token (JWT) to see your wallet.");
});
