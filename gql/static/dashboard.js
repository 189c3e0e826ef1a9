// Index dashboard: talks to /graphql exactly as any outside frontend would; no framework, no build step.
// Queries: GET with persisted-query hashes, revalidated through the browser's HTTP cache (see the API part).
"use strict";

(() => {
  const PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b",
    "#d6338f", "#0e8c99", "#5f6b77", "#8a8a14", "#e8710a",
  ];
  const DEFAULT_CODES = ["000300", "000905", "HSI"];
  const LONG_RANGES = new Set(["3Y", "5Y", "ALL"]);
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const DAY_MS = 86400000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const INDEXES_QUERY = `query Indexes { indexes { code name source firstDate lastDate } }`;
  const CHART_QUERY = `query Chart($codes: [String!], $start: Date, $frequency: Frequency!) {
  indexChart(codes: $codes, start: $start, frequency: $frequency) {
    start end frequency
    series { code name totalReturn maxDrawdown points { date normalized drawdown } }
  }
}`;
  const YTD_QUERY = `query YearToDate {
  yieldThisYear { code name yieldPct baseDate baseClose lastDate lastClose baseIsFirstCloseOfYear }
}`;
  const REFRESH_MUTATION = `mutation Refresh { refreshCache { refreshed { target durationMs } } }`;
  const CHANGES_SUBSCRIPTION = `subscription DataChanged { dataChanged { version previousVersion codes lastDate } }`;
  // The cheapest question whose answer names the data version (extensions.dataVersion): no resolver, no rows,
  // and the server catches up with the fleet's data epoch before answering it.
  const VERSION_QUERY = "{ __typename }";
  const POLL_MS = 10000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 60000;
  const ACK_TIMEOUT_MS = 10000;

  const state = {
    indexes: [],
    colors: new Map(),
    lastDate: null,
    range: "5Y",
    frequency: "WEEKLY",
    frequencyChosen: false,
    view: "performance",
    selected: new Set(),
    chart: null,
    chartSeq: 0,
    ytdSeq: 0,
    ytdRows: null, // the year-to-date rows last loaded: a YTD chart starts at their base close
    ytdLoad: null,
    without: [], // selected indexes with no close in the chart's range (charted: none of them)
    dataVersion: null, // the data version the page shows (of the index list last loaded)
  };

  // How the page hears of new data: the dataChanged subscription, or polling while the socket is down.
  const live = {
    socket: null,
    mode: "connecting",
    retryMs: RETRY_MIN_MS, // the next wait before trying the socket again (doubles, up to RETRY_MAX_MS)
    retryTimer: null,
    since: 0, // when the socket was acknowledged: one that lasted is retried at once after it closes
    pollTimer: null,
    reloading: null, // the reload under way, if any
    again: false, // another change came during it
    heard: null, // the version the last event named, and how often the page has asked for it in vain
    tries: 0,
  };

  const $ = (selector) => document.querySelector(selector);

  // --- API -------------------------------------------------------------------------------------------
  //
  // Queries go as GET with Automatic Persisted Queries, as Apollo Client's persisted-queries link does with
  // useGETForHashedQueries: the URL names the SHA-256 of the query text only; when the server does not know
  // it (PERSISTED_QUERY_NOT_FOUND) the same request goes once more with the text, which registers it, and
  // the hash alone does from then on. The browser's HTTP cache keeps the answers (their ETag) and every
  // load revalidates (`cache: "no-cache"`): If-None-Match, and on 304 the stored body. Mutations are POSTs.

  // Longer URLs go as POST: well under what uvicorn (h11: 16 KiB of request line and headers) and common
  // proxies (nginx: 8 KiB per request line) take.
  const MAX_GET_URL = 4000;
  const hashes = new Map(); // query text -> Promise of its SHA-256 in hex (null without crypto.subtle)

  class ApiError extends Error {
    constructor(message, code, cache) {
      super(message);
      this.code = code;
      this.cache = cache || [];
    }
  }

  // crypto.subtle exists in secure contexts only (https:, and http://localhost or 127.0.0.1): elsewhere the
  // page sends the query text itself.
  function queryHash(query) {
    if (!hashes.has(query)) {
      const subtle = window.isSecureContext && window.crypto && window.crypto.subtle;
      hashes.set(query, !subtle ? Promise.resolve(null) : subtle.digest("SHA-256", new TextEncoder().encode(query))
        .then((buffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join(""))
        .catch(() => null));
    }
    return hashes.get(query);
  }

  function operationName(query) {
    const match = /^\s*(?:query|mutation)\s+([_A-Za-z][_0-9A-Za-z]*)/.exec(query);
    return match ? match[1] : null;
  }

  // The query string of a GET, in a fixed order (the browser's cache is keyed by the URL).
  function getUrl(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value === undefined || value === null) continue;
      search.set(name, typeof value === "string" ? value : JSON.stringify(value));
    }
    return `graphql?${search}`;
  }

  // Resource Timing tells an answer the server sent from the browser's stored copy it confirmed with a 304
  // (fetch shows both as 200): `deliveryType` "cache", or a transfer of headers only. The observer sees every
  // entry (the performance buffer, which it does not depend on, is emptied when full).
  const timings = [];
  const timingWaiters = new Set();
  if (window.PerformanceObserver) {
    try {
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) {
          if (entry.initiatorType !== "fetch") continue;
          timings.push(entry);
          if (timings.length > 200) timings.splice(0, timings.length - 200);
        }
        for (const waiter of [...timingWaiters]) waiter();
      }).observe({ type: "resource", buffered: true });
      performance.addEventListener("resourcetimingbufferfull", () => performance.clearResourceTimings());
    } catch {
      // No Resource Timing: answers are shown as the server sent them first.
    }
  }

  function takeTiming(url, since) {
    const i = timings.findIndex((e) => e.name === url && e.startTime >= since);
    return i < 0 ? null : timings.splice(i, 1)[0];
  }

  // Whether the answer fetched from `url` (at `since`) is the browser's copy: true, false, or null (unknown).
  function fromBrowserCopy(url, since) {
    return new Promise((resolve) => {
      const decide = (entry) => resolve(entry === null ? null
        : entry.deliveryType === "cache" || entry.transferSize === 0
          || (entry.encodedBodySize > 0 && entry.transferSize < entry.encodedBodySize + 300));
      const now = takeTiming(url, since);
      if (now !== null || !window.PerformanceObserver) {
        decide(now);
        return;
      }
      const waiter = () => {
        const entry = takeTiming(url, since);
        if (entry === null) return;
        timingWaiters.delete(waiter);
        clearTimeout(timer);
        decide(entry);
      };
      const timer = setTimeout(() => { timingWaiters.delete(waiter); decide(null); }, 1000);
      timingWaiters.add(waiter);
    });
  }

  async function send(url, init) {
    const since = performance.now();
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(`could not reach the API (${err.message})`, "NETWORK");
    }
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      const detail = text.trim().slice(0, 200) || response.statusText;
      throw new ApiError(`the API answered HTTP ${response.status}: ${detail}`, `HTTP_${response.status}`);
    }
    const cached = init.method === "GET" && response.headers.get("etag") ? await fromBrowserCopy(response.url, since) : false;
    const age = response.headers.get("age");
    return { response, body, revalidated: cached === true, age: age === null ? null : Number(age) };
  }

  function post(payload, headers) {
    return send("graphql", {
      method: "POST",
      headers: { "content-type": "application/json", ...(headers || {}) },
      body: JSON.stringify(payload),
    });
  }

  // A query: GET with the hash, the text once when the server asks for it (GET, or POST when too long).
  async function ask(query, variables, cache) {
    const name = operationName(query);
    const vars = variables && Object.keys(variables).length ? variables : undefined;
    const hash = await queryHash(query);
    const extensions = hash ? { persistedQuery: { version: 1, sha256Hash: hash } } : undefined;
    const init = { method: "GET", headers: { accept: "application/json" }, cache };
    if (hash) {
      const answer = await send(getUrl({ operationName: name, variables: vars, extensions }), init);
      const code = answer.body && answer.body.errors && answer.body.errors[0].extensions
        && answer.body.errors[0].extensions.code;
      if (code !== "PERSISTED_QUERY_NOT_FOUND") return answer;
    }
    const url = getUrl({ query, operationName: name, variables: vars, extensions });
    if (new URL(url, location.href).href.length <= MAX_GET_URL) return send(url, init);
    return post({ query, operationName: name, variables: vars || {}, extensions });
  }

  // `options.mutation`: sent as POST. `options.cache`: the fetch cache mode of a query ("no-cache": the
  // browser revalidates its copy; "reload": a new answer, after refreshCache has invalidated the old ones).
  async function graphql(query, variables, options) {
    const { headers, mutation, cache } = options || {};
    const { response, body, revalidated, age } = mutation
      ? await post({ query, variables: variables || {} }, headers)
      : await ask(query, variables, cache || "no-cache");
    const report = (body && body.extensions && body.extensions.cache) || [];
    if (body.errors && body.errors.length) {
      const message = body.errors.map((e) => e.message).join("; ");
      const code = body.errors[0].extensions && body.errors[0].extensions.code;
      throw new ApiError(message, code, report);
    }
    if (!response.ok || !body.data) {
      throw new ApiError(`the API answered HTTP ${response.status} without data`, `HTTP_${response.status}`, report);
    }
    // A 304 leaves the body as it was first sent: its cache report is then of that earlier answer.
    const cacheReport = revalidated ? report.map((entry) => ({
      ...entry, revalidated: entry.status,
      status: "REVALIDATED", ageSeconds: report.length === 1 && age !== null ? age : entry.ageSeconds,
    })) : report;
    return { data: body.data, cache: cacheReport, version: body.extensions && body.extensions.dataVersion };
  }

  // --- Formatting ------------------------------------------------------------------------------------

  function formatPct(value) {
    return `${value > 0 ? "+" : ""}${value.toFixed(2)} %`;
  }

  function formatAge(seconds) {
    const age = Math.max(0, seconds || 0);
    return age < 10 ? age.toFixed(1) : String(Math.round(age));
  }

  function formatMs(ms) {
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function formatNumber(value) {
    return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function shortName(index) {
    const short = index.name.replace(/\s*[(（].*[)）]\s*$/, "").trim();
    return short || index.name;
  }

  function errorText(err) {
    return err.code && !String(err.code).startsWith("HTTP_") && err.code !== "NETWORK"
      ? `${err.message} (${err.code})` : err.message;
  }

  function showError(selector, message) {
    const el = $(selector);
    el.textContent = message;
    el.hidden = false;
  }

  function hideError(selector) {
    const el = $(selector);
    el.textContent = "";
    el.hidden = true;
  }

  function renderCache(selector, entries) {
    const el = $(selector);
    el.replaceChildren();
    const label = document.createElement("span");
    label.className = "muted";
    label.textContent = "Cache:";
    el.append(label);
    if (!entries.length) {
      const none = document.createElement("span");
      none.className = "cache-entry";
      none.dataset.status = "NONE";
      none.textContent = "no cache entry";
      el.append(none);
      return;
    }
    for (const entry of entries) {
      const span = document.createElement("span");
      span.className = "cache-entry";
      span.dataset.status = entry.status;
      span.dataset.field = entry.field || entry.path;
      span.dataset.age = String(entry.ageSeconds);
      const prefix = entries.length > 1 ? `${entry.field || entry.path} ` : "";
      span.textContent = `${prefix}${entry.status}, ${formatAge(entry.ageSeconds)} s old`;
      if (entry.revalidated) {
        // The server answered 304 Not Modified: the browser's copy stands (its report is of when it was sent).
        span.dataset.first = entry.revalidated;
        span.title = `${entry.path}: unchanged (304 Not Modified), the browser's copy (${entry.revalidated} when it was `
          + `sent); computed ${formatAge(entry.ageSeconds)} s ago`;
      } else {
        const ttl = typeof entry.ttlSeconds === "number" ? `, fresh for ${Math.round(entry.ttlSeconds)} s more` : "";
        span.title = `${entry.path}: ${entry.status}, computed ${formatAge(entry.ageSeconds)} s ago${ttl}`;
      }
      el.append(span);
    }
  }

  // --- Dates -----------------------------------------------------------------------------------------

  function parseDate(iso) {
    const [y, m, d] = iso.split("-").map(Number);
    return Date.UTC(y, m - 1, d);
  }

  function isoDate(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function yearsBefore(iso, years) {
    const [y, m, d] = iso.split("-").map(Number);
    const daysInMonth = new Date(Date.UTC(y - years, m, 0)).getUTCDate();
    return isoDate(Date.UTC(y - years, m - 1, Math.min(d, daysInMonth)));
  }

  function startForRange(range, lastDate) {
    if (!lastDate) return null;
    switch (range) {
      case "1Y": return yearsBefore(lastDate, 1);
      case "3Y": return yearsBefore(lastDate, 3);
      case "5Y": return yearsBefore(lastDate, 5);
      case "YTD": return `${lastDate.slice(0, 4)}-01-01`;
      default: return null;
    }
  }

  // Year to date on the chart is measured as in the table, from the last close of the previous year (the
  // rows' baseDate), so the legend and the table show the same figure for the same index.
  function chartStart(codes, periodStart) {
    if (state.range !== "YTD") return periodStart;
    const bases = (state.ytdRows || []).filter((r) => codes.includes(r.code)).map((r) => r.baseDate).sort();
    return bases[0] || periodStart;
  }

  // --- Header and index picker -----------------------------------------------------------------------

  function renderHeader() {
    const sources = [...new Set(state.indexes.map((i) => i.source))];
    $("#data-source").textContent = sources.length ? sources.join(", ") : "no indexes";
    $("#data-last-date").textContent = state.lastDate || "–";
  }

  function renderIndexOptions() {
    const box = $("#index-options");
    box.replaceChildren();
    for (const index of state.indexes) {
      const label = document.createElement("label");
      label.className = "index-option";
      label.style.setProperty("--swatch", state.colors.get(index.code));
      label.title = `${index.name}: ${index.firstDate} to ${index.lastDate}`;
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = index.code;
      input.dataset.code = index.code;
      input.checked = state.selected.has(index.code);
      input.addEventListener("change", () => {
        if (input.checked) state.selected.add(index.code);
        else state.selected.delete(index.code);
        loadChart();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.textContent = shortName(index);
      label.append(input, swatch, name);
      if (name.textContent !== index.code) {
        const code = document.createElement("span");
        code.className = "code";
        code.textContent = index.code;
        label.append(code);
      }
      box.append(label);
    }
    if (!state.indexes.length) box.textContent = "No indexes in the data set.";
  }

  // --- Chart -----------------------------------------------------------------------------------------

  function svgEl(tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) {
      lo -= 1;
      hi += 1;
    }
    const raw = (hi - lo) / Math.max(1, count);
    const power = 10 ** Math.floor(Math.log10(raw));
    const err = raw / power;
    const step = power * (err >= 7.07 ? 10 : err >= 3.16 ? 5 : err >= 1.41 ? 2 : 1);
    const start = Math.floor(lo / step) * step;
    const end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = start; v <= end + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
    return { lo: start, hi: end, step, ticks };
  }

  function timeTicks(t0, t1, plotWidth) {
    const spanDays = (t1 - t0) / DAY_MS;
    let maxTicks = Math.max(2, Math.floor(plotWidth / 75));
    const ticks = [];
    for (const days of [1, 2, 7, 14]) {
      if (spanDays / days <= maxTicks) {
        // Weekly ticks fall on Mondays.
        let t = Math.ceil(t0 / DAY_MS) * DAY_MS;
        if (days >= 7) while (new Date(t).getUTCDay() !== 1) t += DAY_MS;
        for (; t <= t1; t += days * DAY_MS) {
          const d = new Date(t);
          ticks.push({ t, label: `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}` });
        }
        return ticks;
      }
    }
    for (const months of [1, 2, 3, 6]) {
      if (spanDays / (30.44 * months) <= maxTicks) {
        const first = new Date(t0);
        let y = first.getUTCFullYear();
        let m = first.getUTCMonth();
        if (Date.UTC(y, m, 1) < t0) m += 1;
        while (m % months) m += 1;
        for (let t = Date.UTC(y, m, 1); t <= t1; m += months, t = Date.UTC(y, m, 1)) {
          const d = new Date(t);
          const month = d.getUTCMonth();
          const label = month === 0 || ticks.length === 0 ? `${MONTHS[month]} ${d.getUTCFullYear()}` : MONTHS[month];
          ticks.push({ t, label: month === 0 ? String(d.getUTCFullYear()) : label });
        }
        return ticks;
      }
    }
    maxTicks = Math.max(2, Math.floor(plotWidth / 55));
    for (const years of [1, 2, 5, 10, 20, 50]) {
      if (spanDays / (365.25 * years) <= maxTicks || years === 50) {
        let y = new Date(t0).getUTCFullYear();
        if (Date.UTC(y, 0, 1) < t0) y += 1;
        while (y % years) y += 1;
        for (let t = Date.UTC(y, 0, 1); t <= t1; y += years, t = Date.UTC(y, 0, 1)) {
          ticks.push({ t, label: String(y) });
        }
        return ticks;
      }
    }
    return ticks;
  }

  function valueOf(point) {
    return state.view === "performance" ? point.normalized : point.drawdown;
  }

  function formatAxisValue(value, step) {
    const decimals = step >= 1 ? 0 : Math.min(4, Math.ceil(-Math.log10(step)));
    const text = value.toFixed(decimals);
    return state.view === "performance" ? text : `${text} %`;
  }

  function renderChart() {
    const area = $("#chart-area");
    const chart = state.chart;
    const section = $("#chart");
    section.dataset.view = state.view;
    $("#chart-subtitle").textContent = chart
      ? `${state.view === "performance" ? "Performance, start = 100" : "Drawdown, % below the running peak"} · ${chart.start} to ${chart.end} · ${chart.frequency.toLowerCase()}`
      : "";
    renderLegend();
    if (!chart) return;

    const series = chart.series.filter((s) => s.points.length > 0);
    if (!series.length) {
      const empty = document.createElement("p");
      empty.className = "placeholder";
      empty.textContent = "No prices in this range for the selected indexes.";
      area.replaceChildren(empty);
      return;
    }

    const width = Math.max(320, Math.floor(area.clientWidth || 720));
    const height = Math.round(Math.min(420, Math.max(240, width * 0.45)));
    // The axis spans the range asked for, so a YTD chart starts at Jan 1 even if the first close is later.
    let t0 = parseDate(chart.start);
    let t1 = parseDate(chart.end);
    let lo = Infinity;
    let hi = -Infinity;
    const parsed = series.map((s) => {
      const times = s.points.map((p) => parseDate(p.date));
      const values = s.points.map(valueOf);
      t0 = Math.min(t0, times[0]);
      t1 = Math.max(t1, times[times.length - 1]);
      for (const v of values) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      return { series: s, times, values };
    });
    if (state.view === "performance") {
      lo = Math.min(lo, 100);
      hi = Math.max(hi, 100);
    } else {
      hi = 0;
    }
    if (t1 <= t0) {
      t0 -= DAY_MS;
      t1 += DAY_MS;
    }

    const yTicks = niceTicks(lo, hi, Math.max(3, Math.floor(height / 60)));
    const yLabels = yTicks.ticks.map((v) => formatAxisValue(v, yTicks.step));
    const margin = {
      top: 10,
      right: 14,
      bottom: 26,
      left: 12 + 7.2 * Math.max(...yLabels.map((l) => l.length)),
    };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => margin.top + (1 - (v - yTicks.lo) / (yTicks.hi - yTicks.lo)) * plotH;

    const names = series.map((s) => s.name).join(", ");
    const svg = svgEl("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": `${state.view === "performance" ? "Normalized performance (start = 100)" : "Drawdown in percent"} of ${names}, ${chart.start} to ${chart.end}`,
      "data-view": state.view,
      "data-start": chart.start,
      "data-end": chart.end,
      "data-frequency": chart.frequency,
    });

    const grid = svgEl("g", { class: "grid" });
    const yAxis = svgEl("g", { class: "axis y-axis" });
    yTicks.ticks.forEach((v, i) => {
      const py = y(v);
      grid.append(svgEl("line", { x1: margin.left, x2: width - margin.right, y1: py, y2: py }));
      yAxis.append(svgEl("text", { x: margin.left - 6, y: py, "text-anchor": "end", "dominant-baseline": "middle" }, yLabels[i]));
    });
    const xAxis = svgEl("g", { class: "axis x-axis" });
    const xTicks = timeTicks(t0, t1, plotW);
    for (const tick of xTicks) {
      const px = x(tick.t);
      grid.append(svgEl("line", { x1: px, x2: px, y1: margin.top, y2: margin.top + plotH }));
      xAxis.append(svgEl("line", { x1: px, x2: px, y1: margin.top + plotH, y2: margin.top + plotH + 4 }));
      xAxis.append(svgEl("text", { x: px, y: height - 6, "text-anchor": "middle" }, tick.label));
    }
    xAxis.append(svgEl("line", { x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH }));
    svg.append(grid, yAxis, xAxis);

    const reference = state.view === "performance" ? 100 : 0;
    svg.append(svgEl("line", {
      class: "baseline", x1: margin.left, x2: width - margin.right, y1: y(reference), y2: y(reference),
    }));

    const lines = svgEl("g", { class: "series" });
    for (const p of parsed) {
      const coords = p.times.map((t, i) => `${x(t).toFixed(1)},${y(p.values[i]).toFixed(1)}`).join(" ");
      const line = svgEl("polyline", {
        points: coords,
        stroke: state.colors.get(p.series.code) || "#333",
        "data-code": p.series.code,
        "data-points": p.times.length,
        "data-first-date": p.series.points[0].date,
        "data-last-date": p.series.points[p.series.points.length - 1].date,
      });
      line.append(svgEl("title", {}, p.series.name));
      lines.append(line);
    }
    svg.append(lines);

    const hoverLine = svgEl("line", {
      class: "hover-line", y1: margin.top, y2: margin.top + plotH, x1: 0, x2: 0, visibility: "hidden",
    });
    const overlay = svgEl("rect", {
      x: margin.left, y: margin.top, width: plotW, height: plotH, fill: "transparent", "pointer-events": "all",
    });
    svg.append(hoverLine, overlay);

    const tooltip = document.createElement("div");
    tooltip.className = "tooltip";
    tooltip.hidden = true;
    tooltip.setAttribute("aria-hidden", "true");

    overlay.addEventListener("pointermove", (event) => {
      const rect = svg.getBoundingClientRect();
      const px = ((event.clientX - rect.left) / rect.width) * width;
      const t = t0 + ((px - margin.left) / plotW) * (t1 - t0);
      showTooltip(t, px, (event.clientY - rect.top) * (height / rect.height));
    });
    overlay.addEventListener("pointerleave", () => {
      tooltip.hidden = true;
      hoverLine.setAttribute("visibility", "hidden");
    });

    function nearest(times, t) {
      let lo2 = 0;
      let hi2 = times.length - 1;
      while (lo2 < hi2) {
        const mid = (lo2 + hi2) >> 1;
        if (times[mid] < t) lo2 = mid + 1;
        else hi2 = mid;
      }
      if (lo2 > 0 && Math.abs(times[lo2 - 1] - t) <= Math.abs(times[lo2] - t)) lo2 -= 1;
      return lo2;
    }

    function showTooltip(t, px, py) {
      let best = null;
      const rows = [];
      for (const p of parsed) {
        const i = nearest(p.times, t);
        if (best === null || Math.abs(p.times[i] - t) < Math.abs(best - t)) best = p.times[i];
        rows.push({ p, i });
      }
      const bx = x(best);
      hoverLine.setAttribute("x1", bx);
      hoverLine.setAttribute("x2", bx);
      hoverLine.setAttribute("visibility", "visible");
      const date = document.createElement("div");
      date.className = "tip-date";
      date.textContent = isoDate(best);
      tooltip.replaceChildren(date);
      for (const { p, i } of rows) {
        const row = document.createElement("div");
        row.className = "tip-row";
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.setProperty("--swatch", state.colors.get(p.series.code));
        const name = document.createElement("span");
        name.textContent = shortName(p.series);
        const value = document.createElement("span");
        value.className = "value";
        const v = p.values[i];
        value.textContent = state.view === "performance" ? v.toFixed(2) : `${v.toFixed(2)} %`;
        if (p.times[i] !== best) value.textContent += ` (${p.series.points[i].date})`;
        row.append(swatch, name, value);
        tooltip.append(row);
      }
      tooltip.hidden = false;
      const scale = area.clientWidth / width;
      const left = bx * scale + 14;
      const tipWidth = tooltip.offsetWidth;
      tooltip.style.left = `${left + tipWidth > area.clientWidth ? bx * scale - tipWidth - 14 : left}px`;
      tooltip.style.top = `${Math.max(0, Math.min(py * scale - 20, area.clientHeight - tooltip.offsetHeight))}px`;
    }

    area.replaceChildren(svg, tooltip);
  }

  function legendItem(code, name, statsText) {
    const item = document.createElement("li");
    item.dataset.code = code;
    item.style.setProperty("--swatch", state.colors.get(code));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.textContent = name;
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = statsText;
    item.append(swatch, label, stats);
    return item;
  }

  function renderLegend() {
    const legend = $("#chart-legend");
    legend.replaceChildren();
    for (const index of state.without) {
      const item = legendItem(index.code, index.name, `no closes in this range (data from ${index.firstDate} to ${index.lastDate})`);
      item.className = "no-data";
      legend.append(item);
    }
    if (!state.chart) return;
    for (const s of state.chart.series) {
      // The figure names its period: from the first point drawn.
      legend.append(legendItem(s.code, s.name, s.points.length
        ? `${formatPct(s.totalReturn)} since ${s.points[0].date}, max drawdown ${formatPct(s.maxDrawdown)}`
        : "no prices in this range"));
    }
  }

  function setChartState(value) {
    $("#chart").dataset.state = value;
    $("#chart-area").setAttribute("aria-busy", value === "loading" ? "true" : "false");
  }

  // Nothing to ask the API for: say why instead of a chart (the legend still lists the indexes without data).
  function showNoChart(text) {
    state.chart = null;
    hideError("#chart-error");
    const hint = document.createElement("p");
    hint.className = "placeholder";
    hint.textContent = text;
    $("#chart-area").replaceChildren(hint);
    $("#chart-cache").replaceChildren();
    renderChart();
    setChartState("empty");
  }

  // `fresh`: a new answer rather than the browser's copy revalidated (after refreshCache).
  async function loadChart(fresh) {
    const seq = ++state.chartSeq;
    const section = $("#chart");
    section.dataset.range = state.range;
    section.dataset.frequency = state.frequency;
    if (!state.lastDate) {
      setChartState("error");
      showError("#chart-error", "Chart unavailable: the list of indexes could not be loaded.");
      return;
    }
    const codes = state.indexes.map((i) => i.code).filter((code) => state.selected.has(code));
    state.without = [];
    if (!codes.length) {
      showNoChart("Select at least one index to draw the chart.");
      return;
    }
    setChartState("loading");
    if (state.range === "YTD" && state.ytdLoad) await state.ytdLoad;
    if (seq !== state.chartSeq) return;
    // One index without closes in the range must not cost the others their chart: ask only for those that
    // have some, and say per index why the rest are not drawn.
    const periodStart = startForRange(state.range, state.lastDate);
    const byCode = new Map(state.indexes.map((i) => [i.code, i]));
    const charted = codes.filter((code) => !periodStart || byCode.get(code).lastDate >= periodStart);
    state.without = codes.filter((code) => !charted.includes(code)).map((code) => byCode.get(code));
    if (!charted.length) {
      showNoChart("No prices in this range for the selected indexes.");
      return;
    }
    const variables = { codes: charted, start: chartStart(charted, periodStart), frequency: state.frequency };
    try {
      const { data, cache } = await graphql(CHART_QUERY, variables, { cache: fresh ? "reload" : "no-cache" });
      if (seq !== state.chartSeq) return;
      hideError("#chart-error");
      state.chart = data.indexChart;
      renderChart();
      renderCache("#chart-cache", cache);
      section.dataset.generation = String(Number(section.dataset.generation || 0) + 1);
      setChartState("ready");
    } catch (err) {
      if (seq !== state.chartSeq) return;
      state.chart = null;
      showError("#chart-error", `Could not load the chart: ${errorText(err)}`);
      const none = document.createElement("p");
      none.className = "placeholder";
      none.textContent = "No chart.";
      $("#chart-area").replaceChildren(none);
      renderChart();
      renderCache("#chart-cache", err.cache);
      setChartState("error");
    }
  }

  // --- Year-to-date table ----------------------------------------------------------------------------

  function renderYtd(rows) {
    const body = $("#ytd-table tbody");
    body.replaceChildren();
    const sorted = [...rows].sort((a, b) => b.yieldPct - a.yieldPct || a.code.localeCompare(b.code));
    let flagged = false;
    for (const row of sorted) {
      const tr = document.createElement("tr");
      tr.dataset.code = row.code;
      tr.dataset.yield = String(row.yieldPct);

      const nameCell = document.createElement("td");
      const name = document.createElement("span");
      name.className = "index-name";
      name.textContent = shortName(row);
      name.title = row.name;
      const code = document.createElement("span");
      code.className = "index-code";
      const alias = row.name.match(/[(（]([^()（）]*)[)）]\s*$/);
      code.textContent = alias ? `${row.code} · ${alias[1]}` : row.code;
      if (row.baseIsFirstCloseOfYear) {
        flagged = true;
        const flag = document.createElement("abbr");
        flag.className = "flag";
        flag.textContent = " †";
        flag.title = "No close in the previous year: measured from the first close of this year";
        code.append(flag);
      }
      nameCell.append(name, code);

      const pct = document.createElement("td");
      pct.className = `num ytd ${row.yieldPct > 0 ? "pos" : row.yieldPct < 0 ? "neg" : ""}`;
      pct.textContent = formatPct(row.yieldPct);

      const base = document.createElement("td");
      base.className = "date base-date";
      base.textContent = row.baseDate;
      base.title = `Base close ${formatNumber(row.baseClose)} on ${row.baseDate}`;

      const last = document.createElement("td");
      last.className = "date last-date";
      last.textContent = row.lastDate;
      last.title = `Last close ${formatNumber(row.lastClose)} on ${row.lastDate}`;

      tr.append(nameCell, pct, base, last);
      body.append(tr);
    }
    // Indexes with no close in the year have no year-to-date for it: listed under the ranked ones, with why.
    const year = (sorted[0] && sorted[0].lastDate.slice(0, 4)) || (state.lastDate && state.lastDate.slice(0, 4));
    const measured = new Set(rows.map((r) => r.code));
    for (const index of state.indexes.filter((i) => !measured.has(i.code))) {
      const tr = document.createElement("tr");
      tr.dataset.code = index.code;
      tr.className = "no-data";
      const nameCell = document.createElement("td");
      const name = document.createElement("span");
      name.className = "index-name";
      name.textContent = shortName(index);
      name.title = index.name;
      nameCell.append(name);
      const why = document.createElement("td");
      why.colSpan = 3;
      why.className = "note";
      why.textContent = `no close in ${year}: data from ${index.firstDate} to ${index.lastDate}`;
      tr.append(nameCell, why);
      body.append(tr);
    }
    if (!sorted.length && !body.children.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 4;
      td.textContent = "No indexes.";
      tr.append(td);
      body.append(tr);
    }
    $("#ytd-note").textContent = "Base: last close of the previous year. Last: latest close. Hover a date for its close."
      + (flagged ? " † no close in the previous year: measured from the first close of this year." : "");
  }

  function loadYtd(fresh) {
    state.ytdLoad = fetchYtd(fresh);
    return state.ytdLoad;
  }

  async function fetchYtd(fresh) {
    const seq = ++state.ytdSeq;
    const section = $("#ytd");
    const table = $("#ytd-table");
    section.dataset.state = "loading";
    table.setAttribute("aria-busy", "true");
    try {
      const { data, cache } = await graphql(YTD_QUERY, {}, { cache: fresh ? "reload" : "no-cache" });
      if (seq !== state.ytdSeq) return;
      hideError("#ytd-error");
      state.ytdRows = data.yieldThisYear;
      renderYtd(data.yieldThisYear);
      renderCache("#ytd-cache", cache);
      section.dataset.generation = String(Number(section.dataset.generation || 0) + 1);
      section.dataset.state = "ready";
    } catch (err) {
      if (seq !== state.ytdSeq) return;
      showError("#ytd-error", `Could not load the year-to-date table: ${errorText(err)}`);
      renderCache("#ytd-cache", err.cache);
      section.dataset.state = "error";
    } finally {
      if (seq === state.ytdSeq) table.setAttribute("aria-busy", "false");
    }
  }

  // --- Refresh ---------------------------------------------------------------------------------------

  function setRefreshStatus(text, status, targets) {
    const el = $("#refresh-status");
    el.textContent = text;
    el.dataset.state = status;
    if (targets) el.dataset.targets = targets.join(",");
    else delete el.dataset.targets;
  }

  function showRefreshForm(open) {
    const form = $("#refresh-form");
    form.hidden = !open;
    $("#refresh-button").setAttribute("aria-expanded", String(open));
    if (open) $("#refresh-token").focus();
    else $("#refresh-token").value = "";
  }

  async function refreshCache(event) {
    event.preventDefault();
    const token = $("#refresh-token").value.trim();
    const buttons = [$("#refresh-button"), $("#refresh-submit")];
    buttons.forEach((b) => { b.disabled = true; });
    setRefreshStatus("Refreshing the cache…", "pending");
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const { data } = await graphql(REFRESH_MUTATION, {}, { headers, mutation: true });
      const refreshed = data.refreshCache.refreshed;
      const summary = refreshed.map((r) => `${r.target} in ${formatMs(r.durationMs)}`).join(", ");
      const targets = refreshed.map((r) => r.target);
      showRefreshForm(false);
      setRefreshStatus(`Refreshed ${summary}. Reloading data…`, "ok", targets);
      await Promise.all([loadChart(true), loadYtd(true)]);
      setRefreshStatus(`Refreshed ${summary}; data reloaded at ${new Date().toLocaleTimeString("en-GB")}.`, "ok", targets);
    } catch (err) {
      setRefreshStatus(`Refresh failed: ${errorText(err)}`, "error");
      $("#refresh-token").select();
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // --- Live updates ----------------------------------------------------------------------------------
  //
  // A minimal graphql-transport-ws client (connection_init, subscribe, next/error/complete, ping/pong) on
  // the page-relative URL, so the page works under a path prefix. When the socket cannot be opened or
  // closes, the page polls for the data version and tries the socket again later, with backoff.

  function setLiveMode(mode) {
    live.mode = mode;
    const el = $("#live-status");
    el.dataset.mode = mode;
    el.textContent = mode === "live" ? "live" : mode === "polling" ? "polling" : "connecting…";
    el.title = mode === "live"
      ? "Live: the page updates itself when new data arrives"
      : mode === "polling"
        ? `Polling: the live connection is down; the page checks for new data every ${POLL_MS / 1000} s`
        : "Connecting to the live updates…";
  }

  function socketUrl() {
    const url = new URL("graphql", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function connectLive() {
    live.retryTimer = null;
    let socket;
    try {
      socket = new WebSocket(socketUrl(), "graphql-transport-ws");
    } catch {
      socketDown();
      return;
    }
    live.socket = socket;
    const send = (message) => socket.send(JSON.stringify(message));
    // A server (or proxy) that never acknowledges is as good as none.
    const ackTimer = setTimeout(() => socket.close(), ACK_TIMEOUT_MS);
    socket.addEventListener("open", () => send({ type: "connection_init", payload: {} }));
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        socket.close(4400, "not JSON");
        return;
      }
      if (message.type === "connection_ack") {
        clearTimeout(ackTimer);
        send({ id: "data", type: "subscribe", payload: { query: CHANGES_SUBSCRIPTION } });
        const wasPolling = live.mode === "polling";
        live.since = Date.now();
        stopPolling();
        setLiveMode("live");
        // A change between the page's last answer and this subscription was not heard: look once.
        if (wasPolling) checkVersion();
      } else if (message.type === "ping") {
        send({ type: "pong" });
      } else if (message.type === "next" && message.id === "data") {
        const change = message.payload && message.payload.data && message.payload.data.dataChanged;
        if (change && change.version !== state.dataVersion) {
          live.heard = change.version;
          live.tries = 0;
          reloadData();
        }
      } else if (message.type === "error" || message.type === "complete") {
        socket.close(); // the subscription was refused or ended: poll, and subscribe again later
      }
    });
    socket.addEventListener("close", () => {
      clearTimeout(ackTimer);
      if (live.socket !== socket) return;
      live.socket = null;
      // A socket refused again and again (a limit, a proxy) is tried less and less often.
      if (live.since && Date.now() - live.since > RETRY_MAX_MS / 6) live.retryMs = RETRY_MIN_MS;
      live.since = 0;
      socketDown();
    });
  }

  function socketDown() {
    const wasLive = live.mode === "live";
    setLiveMode("polling");
    startPolling();
    if (wasLive) checkVersion(); // changes may have come while the socket was going down
    if (live.retryTimer === null) {
      const delay = live.retryMs * (0.75 + Math.random() / 2);
      live.retryMs = Math.min(RETRY_MAX_MS, live.retryMs * 2);
      live.retryTimer = setTimeout(connectLive, delay);
    }
  }

  function startPolling() {
    if (live.pollTimer === null) live.pollTimer = setInterval(checkVersion, POLL_MS);
  }

  function stopPolling() {
    if (live.pollTimer !== null) clearInterval(live.pollTimer);
    live.pollTimer = null;
  }

  async function checkVersion() {
    try {
      const { version } = await graphql(VERSION_QUERY, {}, { cache: "no-store" });
      if (version && version !== state.dataVersion) reloadData();
    } catch {
      // Unreachable for now: the next poll asks again.
    }
  }

  // New data: the index list, the chart and the year-to-date table again, in place. Changes that come
  // during a reload make one more reload after it.
  function reloadData() {
    if (live.reloading) {
      live.again = true;
      return live.reloading;
    }
    live.reloading = (async () => {
      do {
        live.again = false;
        const ytd = loadYtd();
        if (await loadIndexes()) {
          renderHeader();
          renderIndexOptions();
        } else {
          renderHeader();
          refreshIndexTitles();
        }
        await Promise.all([loadChart(), ytd]);
        if (state.ytdRows) renderYtd(state.ytdRows); // with the index list it was loaded beside
      } while (live.again);
    })().finally(() => {
      live.reloading = null;
      // With several server processes, the one answering may take up the new data a moment after the one
      // that told of it: ask again shortly, a few times.
      if (live.heard && live.heard !== state.dataVersion && live.tries < 5) {
        live.tries += 1;
        setTimeout(reloadData, 1000);
      } else {
        live.heard = null;
      }
    });
    return live.reloading;
  }

  // --- Controls and start ----------------------------------------------------------------------------

  function pressOnly(container, button) {
    for (const b of container.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
  }

  function bindControls() {
    const ranges = $("#range-buttons");
    ranges.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-range]");
      if (!button) return;
      pressOnly(ranges, button);
      state.range = button.dataset.range;
      if (!state.frequencyChosen) {
        state.frequency = LONG_RANGES.has(state.range) ? "WEEKLY" : "DAILY";
        $("#frequency").value = state.frequency;
      }
      loadChart();
    });
    $("#frequency").addEventListener("change", (event) => {
      state.frequency = event.target.value;
      state.frequencyChosen = true;
      loadChart();
    });
    const views = $("#view-buttons");
    views.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-view]");
      if (!button) return;
      pressOnly(views, button);
      state.view = button.dataset.view;
      renderChart();
    });
    $("#refresh-button").addEventListener("click", () => {
      showRefreshForm($("#refresh-form").hidden);
    });
    $("#refresh-cancel").addEventListener("click", () => showRefreshForm(false));
    $("#refresh-form").addEventListener("submit", refreshCache);

    let pending = false;
    const observer = new ResizeObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        if (state.chart && $("#chart").dataset.state === "ready") renderChart();
      });
    });
    observer.observe($("#chart-area"));
  }

  // The index list; true when indexes were added or removed (the picker is drawn again). Colours stay with
  // their index, a new one takes the first colour not in use; a removed index leaves the selection.
  async function loadIndexes() {
    let answer;
    try {
      answer = await graphql(INDEXES_QUERY);
      hideError("#data-error");
    } catch (err) {
      showError("#data-error", `Could not load the list of indexes: ${errorText(err)}`);
      if (!state.indexes.length) $("#data-source").textContent = "unavailable";
      return false;
    }
    const before = state.indexes.map((i) => i.code).join(",");
    state.indexes = answer.data.indexes;
    const codes = new Set(state.indexes.map((i) => i.code));
    for (const code of [...state.colors.keys()]) if (!codes.has(code)) state.colors.delete(code);
    for (const code of [...state.selected]) if (!codes.has(code)) state.selected.delete(code);
    for (const index of state.indexes) {
      if (state.colors.has(index.code)) continue;
      const used = new Set(state.colors.values());
      state.colors.set(index.code, PALETTE.find((c) => !used.has(c)) || PALETTE[state.colors.size % PALETTE.length]);
    }
    state.lastDate = state.indexes.reduce((last, i) => (last && last > i.lastDate ? last : i.lastDate), null);
    state.dataVersion = answer.version || null;
    $("#data-info").dataset.version = state.dataVersion || "";
    return state.indexes.map((i) => i.code).join(",") !== before;
  }

  function refreshIndexTitles() {
    const byCode = new Map(state.indexes.map((i) => [i.code, i]));
    for (const input of document.querySelectorAll("#index-options input[data-code]")) {
      const index = byCode.get(input.dataset.code);
      if (index) input.closest("label").title = `${index.name}: ${index.firstDate} to ${index.lastDate}`;
    }
  }

  async function start() {
    bindControls();
    const ytd = loadYtd();
    await loadIndexes();
    const defaults = DEFAULT_CODES.filter((code) => state.colors.has(code));
    const chosen = defaults.length ? defaults : state.indexes.slice(0, 3).map((i) => i.code);
    chosen.forEach((code) => state.selected.add(code));
    renderHeader();
    renderIndexOptions();
    if (state.ytdRows) renderYtd(state.ytdRows); // the rows came first: now the indexes without one are known
    await Promise.all([loadChart(), ytd]);
    connectLive();
  }

  start();
})();
