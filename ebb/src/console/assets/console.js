// Ebb console: follows live parts of a page. An element with data-follow="URL" is replaced by
// what URL answers (an HTML fragment from this console) every two seconds, until the answer
// carries data-done. Without JavaScript the page still works; reload to see progress.
"use strict";
(function () {
  function follow(el) {
    var url = el.getAttribute("data-follow");
    if (!url || el.hasAttribute("data-done")) return;
    var timer = setInterval(function () {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var box = document.createElement("div");
          box.innerHTML = html;
          var next = box.firstElementChild;
          if (!next) return;
          el.replaceWith(next);
          el = next;
          if (next.hasAttribute("data-done")) clearInterval(timer);
        })
        .catch(function () { /* keep trying: the server may be restarting */ });
    }, 2000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-follow]").forEach(follow);
  });
})();
