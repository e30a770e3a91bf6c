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

  // The sagas and outbox pages: the board as the server rendered it (every text in it
  // escaped there), one snapshot for every page. The services whose admin actions this
  // session may take are the page's own (`data-admin-of`, from the operator's scopes; the
  // server checks again on each POST): their rows get the action's button.
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const act = async (url, fields, button, result) => {
    button.disabled = true;
    result.textContent = "…";
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        body: new URLSearchParams(fields),
        credentials: "same-origin",
      });
      result.textContent = await response.text();
      result.dataset.status = String(response.status);
    } catch (e) {
      result.textContent = "the console could not be reached";
    }
    button.disabled = false;
  };
  const board = (testid, action) => {
    const element = document.querySelector('[data-testid="' + testid + '"]');
    if (!element) return null;
    const adminOf = (element.dataset.adminOf || "").split(" ").filter(Boolean);
    const addButtons = () => {
      for (const place of element.querySelectorAll(action.where)) {
        const fields = action.fields(place);
        if (!fields || !adminOf.includes(fields[action.service])) continue;
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.testid = action.testid;
        button.textContent = action.label;
        const result = document.createElement("span");
        result.dataset.testid = action.testid + "-result";
        result.setAttribute("role", "status");
        button.addEventListener("click", () => act(action.url, fields, button, result));
        place.append(" ", button, " ", result);
      }
    };
    addButtons();
    return (snapshot) => {
      element.innerHTML = snapshot.html;
      addButtons();
    };
  };
  // A saga waiting for an operator: Retry, through the gateway with the operator's token.
  const onSagas = board("sagas", {
    where: '[data-testid="saga-waiting"]',
    testid: "saga-retry",
    label: "Retry",
    url: "/sagas/retry",
    service: "owner",
    fields: (place) => {
      const saga = place.closest('[data-testid="saga"]');
      return saga && { owner: saga.dataset.owner, subject: saga.dataset.subject, id: saga.dataset.id };
    },
  });
  // A parked outbox row: Replay, over the console's link, naming the operator.
  const onOutbox = board("outbox", {
    where: '[data-testid="outbox-parked"] .actions',
    testid: "outbox-replay",
    label: "Replay",
    url: "/outbox/replay",
    service: "service",
    fields: (place) => {
      const row = place.closest('[data-testid="outbox-parked"]');
      const section = place.closest('[data-testid="outbox-service"]');
      return row && section && { service: section.dataset.name, id: row.dataset.id };
    },
  });

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
    if (onSagas) source.addEventListener("sagas", (e) => onSagas(JSON.parse(e.data)));
    if (onOutbox) source.addEventListener("outbox", (e) => onOutbox(JSON.parse(e.data)));
    source.addEventListener("resync", () => window.location.reload());
    document.dispatchEvent(new CustomEvent("console:source", { detail: source }));
  };
  connect();
})();
