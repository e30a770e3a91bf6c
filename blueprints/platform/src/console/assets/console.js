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

  let source = null;
  const connect = () => {
    source = new EventSource("/live");
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
    source.addEventListener("resync", () => window.location.reload());
    document.dispatchEvent(new CustomEvent("console:source", { detail: source }));
  };
  connect();
})();
