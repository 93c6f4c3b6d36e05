/* Conveyor's pushed pages (web/live_pages.py): poll while a page's stream is down, stop polling
   once it is back, and keep the log panel following its newest line. Loaded as a file, never
   inline (the pages' Content-Security-Policy allows script from 'self' only). */
(function () {
  "use strict";
  var MAX_LINES = 5000;

  function lastSeq() {
    var list = document.getElementById("log-lines");
    var last = list && list.lastElementChild;
    return last ? last.getAttribute("data-seq") : "0";
  }

  function poll(root) {
    root.querySelectorAll("[data-fallback-get]").forEach(function (el) {
      if (el.hasAttribute("hx-trigger")) return;
      var url = el.getAttribute("data-fallback-get");
      if (el.id === "log-poller") url += "&after=" + lastSeq();
      el.setAttribute("hx-get", url);
      el.setAttribute("hx-trigger", el.getAttribute("data-fallback-trigger"));
      el.setAttribute("hx-swap", "outerHTML");
      htmx.process(el);
    });
    root.setAttribute("data-live", "polling");
  }

  function unpoll(root) {
    root.querySelectorAll("[data-fallback-get][hx-trigger]").forEach(function (el) {
      var calm = el.cloneNode(true);
      calm.removeAttribute("hx-get");
      calm.removeAttribute("hx-trigger");
      el.replaceWith(calm);
      htmx.process(calm);
    });
    root.setAttribute("data-live", "push");
  }

  function streamRoot(event) {
    var target = event.target;
    return target && target.closest ? target.closest("[sse-connect]") : null;
  }

  document.addEventListener("htmx:sseError", function (event) {
    var root = streamRoot(event);
    if (root) poll(root);
  });
  document.addEventListener("htmx:sseOpen", function (event) {
    var root = streamRoot(event);
    if (root && root.getAttribute("data-live") === "polling") unpoll(root);
  });
  document.addEventListener("htmx:sseClose", function (event) {
    var root = streamRoot(event);
    if (root) root.setAttribute("data-live", "ended");
  });

  /* The log panel: drop lines shown twice (a resumed stream, a poll), keep at most MAX_LINES,
     and stay at the newest line unless the reader scrolled up. */
  function tidy(list) {
    var max = 0;
    Array.prototype.slice.call(list.children).forEach(function (li) {
      var seq = Number(li.getAttribute("data-seq"));
      if (seq <= max) li.remove(); else max = seq;
    });
    while (list.children.length > MAX_LINES) list.firstElementChild.remove();
  }

  function follow(list) {
    var following = true;
    list.addEventListener("scroll", function () {
      following = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
      list.setAttribute("data-follow", following ? "yes" : "no");
    });
    new MutationObserver(function () {
      tidy(list);
      if (following) list.scrollTop = list.scrollHeight;
    }).observe(list, { childList: true });
    list.scrollTop = list.scrollHeight;
  }

  function start() {
    var list = document.getElementById("log-lines");
    if (list) follow(list);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
