// The admin board's only script: what htmx cannot do alone under a strict CSP.
// - live fragments (class "live") poll with hx-trigger "every Ns"; while the tab is hidden
//   their requests are cancelled, and when it is shown again they refresh at once;
// - <time data-age> shows its age ("12 s", "in 3 s"), counted here from the server's clock,
//   so the server renders fixed times and an unchanged fragment keeps its ETag;
// - notices from actions (HX-Trigger "board-notice") and JSON errors appear in a toast.
(function () {
  "use strict";

  var REFRESH = "board-refresh";
  var toast = document.getElementById("toast");
  var hideTimer = null;

  function show(text, kind) {
    if (!toast || !text) return;
    toast.textContent = text; // text only: nothing from the server is parsed as HTML
    toast.className = "toast " + (kind || "ok");
    toast.hidden = false;
    window.clearTimeout(hideTimer);
    hideTimer = window.setTimeout(function () { toast.hidden = true; }, kind === "error" ? 8000 : 4000);
  }

  function errorText(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && typeof body.error === "string") return body.error;
    } catch (ignored) { /* not JSON */ }
    return "The server answered " + xhr.status + " " + (xhr.statusText || "");
  }

  var serverTime = document.querySelector('meta[name="board-time"]');
  var skew = serverTime ? Number(serverTime.content) * 1000 - Date.now() : 0;

  function age(seconds) {
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 2 * 86400) return Math.floor(seconds / 3600) + " h";
    return Math.floor(seconds / 86400) + " d";
  }

  function showAges(root) {
    var now = Date.now() + skew;
    var times = (root && root.querySelectorAll ? root : document).querySelectorAll("time[data-age]");
    for (var i = 0; i < times.length; i++) {
      var at = Date.parse(times[i].getAttribute("datetime"));
      if (isNaN(at)) continue;
      var seconds = (now - at) / 1000;
      if (times[i].getAttribute("data-age") === "until") {
        times[i].textContent = seconds < 0 ? "in " + age(-seconds) : "now";
      } else {
        times[i].textContent = age(Math.max(0, seconds));
      }
    }
  }

  if (window.htmx) window.htmx.onLoad(showAges); // the page, then every swapped-in fragment
  window.setInterval(function () { if (!document.hidden) showAges(document); }, 1000);

  document.body.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail && event.detail.elt;
    if (document.hidden && elt && elt.classList && elt.classList.contains("live")) {
      event.preventDefault(); // no polling while nobody looks
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && window.htmx) window.htmx.trigger(document.body, REFRESH);
  });

  document.body.addEventListener("board-notice", function (event) {
    show(event.detail && event.detail.value, "ok");
  });

  document.body.addEventListener("htmx:responseError", function (event) {
    show(errorText(event.detail.xhr), "error");
  });

  document.body.addEventListener("htmx:sendError", function () {
    show("The board cannot reach the server; it will keep trying.", "error");
  });

  if (toast) {
    toast.addEventListener("click", function () { toast.hidden = true; });
  }
})();
