// The console's live refresh and charts. Every second the page asks its /console/live/... URL
// (same origin, the session cookie) for the fresh HTML of its #live region and its chart data;
// the region is replaced only when it changed, and keyboard focus is put back where it was.
(function () {
  "use strict";
  var region = document.getElementById("live");
  if (!region) return;
  var url = region.getAttribute("data-live");
  var status = document.getElementById("live-status");
  var charts = {};
  var lastHtml = null;  // the server's HTML of the region as last applied
  var PERIOD_MS = 1000;

  function num(s) { return s === null || s === undefined ? null : Number(s); }  // display only

  function palette(i) {
    var c = ["#1f6feb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];
    return c[i % c.length];
  }

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas || typeof window.Chart === "undefined") return;
    if (charts[id]) {
      charts[id].data = config.data;
      charts[id].update("none");
    } else {
      config.options = Object.assign({animation: false, responsive: true, maintainAspectRatio: false}, config.options || {});
      charts[id] = new window.Chart(canvas, config);
    }
  }

  function stacked(id, d) {
    draw(id, {type: "bar", data: {labels: d.labels, datasets: d.series.map(function (s, i) {
      return {label: s.name, data: s.data.map(num), backgroundColor: palette(i)};
    })}, options: {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}}}});
  }

  function render(c) {
    if (!c) return;
    if (c.spend) {
      var pts = c.spend.points;
      var labels = pts.map(function (p) { return p.t.slice(5, 16).replace("T", " "); });
      var sets = [{label: "spend (cumulative)", data: pts.map(function (p) { return num(p.spend); }),
                   borderColor: palette(0), backgroundColor: palette(0), stepped: true}];
      if (c.spend.cap !== null) sets.push({label: "spend cap", data: pts.map(function () { return num(c.spend.cap); }),
                                           borderColor: palette(3), borderDash: [6, 4], pointRadius: 0});
      if (num(c.spend.commit)) sets.push({label: "minimum commit", data: pts.map(function () { return num(c.spend.commit); }),
                                          borderColor: palette(2), borderDash: [2, 3], pointRadius: 0});
      draw("chart-spend", {type: "line", data: {labels: labels, datasets: sets},
                           options: {scales: {y: {beginAtZero: true}}}});
    }
    if (c.by_model) stacked("chart-model", c.by_model);
    if (c.by_tool) stacked("chart-tool", c.by_tool);
  }

  // Focus survives a replacement: remember the focused element by id, else by its link target.
  function focusKey() {
    var a = document.activeElement;
    if (!a || !region.contains(a)) return null;
    if (a.id) return {id: a.id};
    if (a.getAttribute("href")) return {href: a.getAttribute("href")};
    return null;
  }
  function refocus(k) {
    if (!k) return;
    var el = k.id ? document.getElementById(k.id) : region.querySelector('[href="' + k.href.replace(/"/g, '\\"') + '"]');
    if (el) el.focus();
  }

  function tick() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
      if (r.status === 401) { window.location.assign("/console/login"); return null; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (d) {
      if (!d) return;
      if (d.html !== lastHtml) {
        var k = focusKey();
        region.innerHTML = d.html;
        lastHtml = d.html;
        refocus(k);
      }
      render(d.charts);
      if (status) status.textContent = "Live: updated " + new Date().toLocaleTimeString() + ".";
    }).catch(function (e) {
      if (status) status.textContent = "Live refresh failed (" + e.message + "); retrying.";
    }).then(function () { window.setTimeout(tick, PERIOD_MS); });
  }
  tick();
})();
