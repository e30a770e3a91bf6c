// The console's one script: listens to /live and updates the page in place. Served from
// the console's own origin (the CSP allows nothing else).
"use strict";

(function () {
  const connection = document.querySelector('[data-testid="connection"]');
  const setConnection = (state, text) => {
    if (!connection) return;
    connection.dataset.state = state;
    connection.textContent = text;
  };

  const figures = (s) => {
    const rate = s.rate == null ? "–" : s.rate.toFixed(1) + "/s";
    const errors = s.errors == null ? "–" : (s.errors * 100).toFixed(1) + "%";
    const p99 = s.p99_ms == null ? "–" : "≤" + Math.round(s.p99_ms) + " ms";
    return rate + " · err " + errors + " · p99 " + p99;
  };

  const onHealth = (statuses) => {
    for (const s of statuses) {
      const selector = '[data-name="' + CSS.escape(s.name) + '"]';
      for (const node of document.querySelectorAll('g' + selector)) {
        node.dataset.health = s.health;
        node.setAttribute("class", "node health-" + s.health);
        const stats = node.querySelector("[data-stats]");
        if (stats) stats.textContent = figures(s);
      }
      const row = document.querySelector('[data-testid="node-row"]' + selector);
      if (row) {
        row.querySelector("[data-health-text]").textContent = s.health.replace("_", " ");
        row.querySelector("[data-stats]").textContent = figures(s);
      }
    }
  };

  // The events page: a live row goes on top, once.
  const events = document.querySelector('[data-testid="events"]');
  const MAX_ROWS = 2048;
  const clock = (ms) => new Date(ms).toISOString().slice(11, 23);
  const cell = (tr, text, title) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    tr.appendChild(td);
    return td;
  };
  const onEvent = (row, liveId) => {
    if (!events || !row.event_id) return;
    // The same row again (a replay that overlapped): a repeat on the bus is a new row.
    if (events.querySelector('[data-live-id="' + CSS.escape(liveId) + '"]')) return;
    const tr = document.createElement("tr");
    tr.dataset.testid = "event";
    tr.dataset.liveId = liveId;
    tr.dataset.eventId = row.event_id;
    tr.dataset.type = row.type;
    tr.dataset.topic = row.topic;
    tr.dataset.aggregateId = row.aggregate_id;
    tr.dataset.version = row.version == null ? "" : String(row.version);
    tr.dataset.traceId = row.trace_id || "";
    tr.dataset.anomaly = row.anomaly || "";
    cell(tr, clock(row.received_ms));
    cell(tr, row.type.split(".").pop(), row.type);
    cell(tr, row.topic);
    const code = document.createElement("code");
    code.textContent = row.aggregate_id;
    cell(tr, "").appendChild(code);
    const version = cell(tr, tr.dataset.version);
    if (row.anomaly) {
      const note = document.createElement("strong");
      note.className = "anomaly";
      note.textContent = row.anomaly;
      version.append(" ", note);
    }
    const trace = cell(tr, "");
    if (row.trace_id) {
      const a = document.createElement("a");
      a.dataset.testid = "event-trace";
      a.href = "/traces/" + encodeURIComponent(row.trace_id);
      a.textContent = "trace";
      trace.appendChild(a);
    }
    events.prepend(tr);
    while (events.rows.length > MAX_ROWS) events.deleteRow(-1);
  };

  // The sagas page: the board as the server rendered it (every text in it escaped there).
  const sagas = document.querySelector('[data-testid="sagas"]');
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  // The owners whose sagas this session may retry (the server decides, from the operator's
  // scopes, and checks again on the POST): their waiting instances get a Retry button.
  const adminOf = sagas ? (sagas.dataset.adminOf || "").split(" ").filter(Boolean) : [];
  const retry = async (saga, button, result) => {
    button.disabled = true;
    result.textContent = "retrying…";
    const body = new URLSearchParams({
      owner: saga.dataset.owner,
      subject: saga.dataset.subject,
      id: saga.dataset.id,
    });
    try {
      const response = await fetch("/sagas/retry", {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        body,
        credentials: "same-origin",
      });
      result.textContent = await response.text();
      result.dataset.status = String(response.status);
    } catch (e) {
      result.textContent = "the console could not be reached";
    }
    button.disabled = false;
  };
  const addRetryButtons = () => {
    if (!sagas) return;
    for (const waiting of sagas.querySelectorAll('[data-testid="saga-waiting"]')) {
      const saga = waiting.closest('[data-testid="saga"]');
      if (!saga || !adminOf.includes(saga.dataset.owner)) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.testid = "saga-retry";
      button.textContent = "Retry";
      const result = document.createElement("span");
      result.dataset.testid = "saga-retry-result";
      result.setAttribute("role", "status");
      button.addEventListener("click", () => retry(saga, button, result));
      waiting.append(" ", button, " ", result);
    }
  };
  const onSagas = (board) => {
    if (!sagas) return;
    sagas.innerHTML = board.html;
    addRetryButtons();
  };
  addRetryButtons();

  let source = null;
  const connect = () => {
    // The first stream starts after the rows the page was rendered with; a reconnect sends
    // Last-Event-ID itself.
    const after = events ? events.dataset.after : "";
    source = new EventSource(after ? "/live?after=" + encodeURIComponent(after) : "/live");
    source.onopen = () => setConnection("live", "live");
    source.onerror = () => {
      setConnection("reconnecting", "reconnecting…");
      // A refused stream (the session ended) is not retried by the browser itself.
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, 2000);
      }
    };
    source.addEventListener("health", (e) => onHealth(JSON.parse(e.data)));
    source.addEventListener("event", (e) => onEvent(JSON.parse(e.data), e.lastEventId));
    source.addEventListener("sagas", (e) => onSagas(JSON.parse(e.data)));
    source.addEventListener("resync", () => window.location.reload());
    document.dispatchEvent(new CustomEvent("console:source", { detail: source }));
  };
  connect();
})();
