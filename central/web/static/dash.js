/* Siaga operators' dashboard: live updates over SSE (EventSource reconnects by itself and sends
   Last-Event-ID), the countdowns, and the forms that call the JSON API with the session's CSRF token.
   Vendored: no library, no CDN. */
(function () {
  "use strict";
  var meta = function (n) { var m = document.querySelector('meta[name="' + n + '"]'); return m ? m.content : ""; };
  var csrf = meta("csrf-token");
  var skew = (parseFloat(meta("server-time")) || Date.now() / 1000) - Date.now() / 1000;

  function swap(id, html) {
    var el = document.getElementById(id);
    if (!el) return null;
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    var n = t.content.firstElementChild;
    el.replaceWith(n);
    return n;
  }

  // The office list stays in the server's order (central/dash/view.py select()) as states change:
  // within a region trouble first (data-rank), then by name; the regions by their worst office, then
  // by name. On this page only (a list longer than a page is re-sorted by the server on reload).
  function byKey(a, b) { return a.k[0] - b.k[0] || (a.k[1] < b.k[1] ? -1 : a.k[1] > b.k[1] ? 1 : 0); }
  function reorder(parent, key) {
    Array.prototype.map.call(parent.children, function (el) { return { k: key(el), el: el }; })
      .sort(byKey).forEach(function (p) { parent.appendChild(p.el); });
  }
  function resort(card) {
    var cards = card && card.parentElement, region = cards && cards.closest(".region");
    if (!region || !region.parentElement) return;
    var rank = function (c) { return parseInt(c.dataset.rank, 10); };
    reorder(cards, function (c) { return [rank(c), c.querySelector(".nm").textContent]; });
    reorder(region.parentElement, function (g) {
      return [Math.min.apply(null, Array.prototype.map.call(g.querySelectorAll(".card"), rank)), g.dataset.region];
    });
  }

  function tick() {
    var now = Date.now() / 1000 + skew;
    document.querySelectorAll(".countdown[data-dark-at]").forEach(function (el) {
      var m = Math.max(0, Math.floor((parseFloat(el.dataset.darkAt) - now) / 60));
      if (el.textContent !== String(m)) el.textContent = String(m);
    });
  }

  function api(method, url, body) {
    return fetch(url, { method: method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body) }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error((j && j.detail && (typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail))) || ("HTTP " + r.status));
        return j;
      });
    });
  }

  function say(form, text, bad) {
    var m = form.querySelector(".msg") || (form.parentNode && form.parentNode.querySelector(".msg"));
    if (m) { m.textContent = text; m.className = "msg" + (bad ? " error" : ""); }
    else if (bad) alert(text);
  }

  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (f.classList.contains("ackform")) {
      ev.preventDefault();
      f.querySelector("button").disabled = true;
      api("POST", "/api/alarms/" + encodeURIComponent(f.dataset.site) + "/" + encodeURIComponent(f.dataset.kind) + "/ack",
          { note: f.note.value }).catch(function (e) { f.querySelector("button").disabled = false; alert(e.message); });
    } else if (f.classList.contains("cmdform")) {
      ev.preventDefault();
      var c = f.querySelector(".confirm");
      c.querySelector(".what").textContent = f.name.options[f.name.selectedIndex].text + " — " + f.reason.value;
      c.hidden = false;
    } else if (f.classList.contains("incform")) {
      ev.preventDefault();
      api("POST", "/api/incidents/" + encodeURIComponent(f.dataset.id) + "/" + f.dataset.action, { note: f.note.value })
        .then(function () { f.note.value = ""; refresh(); }, function (e) { say(f, e.message, true); });
    }
  });

  document.addEventListener("click", function (ev) {
    var b = ev.target;
    if (b.closest && b.closest("[data-print]")) { window.print(); return; }  // no inline handlers: CSP
    var f = b.closest && b.closest(".cmdform");
    if (!f) return;
    if (b.classList.contains("no")) { f.querySelector(".confirm").hidden = true; }
    if (b.classList.contains("yes")) {
      var name = f.name.value, args = {};
      if (name === "test_start") args.duration_s = parseInt(f.duration_s.value, 10);
      if (name === "set_mode") args.mode = f.mode.value;
      f.querySelector(".confirm").hidden = true;
      api("POST", "/api/commands", { sites: [f.dataset.site], name: name, args: args, reason: f.reason.value })
        .then(function (j) { say(f, "✓ " + j.commands.map(function (c) { return c.id; }).join(", ")); },
              function (e) { say(f, e.message, true); });
    }
  });

  // The incident pages: the parts marked data-refresh are fetched again from the page's own address
  // when the incidents change (one opened, an office joining, confirmed or closed by anyone), so the
  // lists and the report stay right without a reload. A part marked data-refresh="idle" (the forms)
  // is left alone while a note is typed in it, and goes when the server no longer renders it. If
  // the fetch fails or gives another page (a session that ended: the login page), nothing is
  // touched and the notice asks for a reload.
  var refreshing = 0;
  function refresh() {
    if (!document.querySelector("[data-refresh][id]")) return;
    var n = ++refreshing;
    fetch(location.href, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok || r.redirected) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      if (n !== refreshing) return;  // a newer fetch is on its way
      var doc = new DOMParser().parseFromString(html, "text/html");
      var parts = document.querySelectorAll("[data-refresh][id]");
      var lost = Array.prototype.some.call(parts, function (el) {
        return el.dataset.refresh !== "idle" && !doc.getElementById(el.id);
      });
      if (lost) throw new Error("another page");
      parts.forEach(function (el) {
        var fresh = doc.getElementById(el.id);
        var typing = el.dataset.refresh === "idle" &&
          Array.prototype.some.call(el.querySelectorAll("input"), function (i) { return i.value; });
        if (typing) return;
        if (fresh) el.replaceWith(document.importNode(fresh, true)); else el.remove();
      });
    }).catch(function () { var c = document.getElementById("changed"); if (c) c.hidden = false; });
  }

  function live() {
    var root = document.querySelector("[data-live]");
    if (!root || !window.EventSource) return;
    var state = document.getElementById("live-state");
    var es = new EventSource(root.dataset.live);
    es.onopen = function () { if (state) { state.textContent = state.dataset.ok; state.className = "live ok"; } };
    es.onerror = function () { if (state) { state.textContent = state.dataset.lost; state.className = "live lost"; } };
    var on = function (type, fn) { es.addEventListener(type, function (e) { fn(JSON.parse(e.data)); tick(); }); };
    on("office", function (d) {
      resort(swap("card-" + d.site, d.html));
      var dot = document.getElementById("dot-" + d.site);
      if (dot) { dot.setAttribute("class", "dot st-" + d.state); dot.setAttribute("r", (d.state === "dark" || d.state === "not_serving") ? 9 : 6); }
    });
    on("panel", function (d) { swap("panel", d.html); });
    on("queue", function (d) { swap("queue", d.html); });
    on("counters", function (d) { swap("counters", d.html); });
    on("alarms", function (d) { swap("alarms", d.html); });
    on("command", function (d) {
      if (!swap("cmd-" + d.id, d.html)) {
        var body = document.getElementById("commands");
        if (body) body.insertAdjacentHTML("afterbegin", d.html);
      }
    });
    on("incidents", refresh);
    es.addEventListener("resync", function () { location.reload(); });
  }

  document.addEventListener("DOMContentLoaded", function () { live(); tick(); setInterval(tick, 1000); });
})();
