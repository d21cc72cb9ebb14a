// The gallery's pages and filters: nanobanana_async/cli/gallery.py writes the data it reads.
//
// gallery/index.js sets window.nbGallery: the number of jobs, one character per job for its
// status and for its model, and the page and chunk sizes. The cards themselves (HTML that
// gallery.py escaped) come in chunks, gallery/cards-NNNNN.js, each loaded with a script tag
// (file:// pages cannot fetch) the first time a page shows one of its cards. So a page of a
// 100,000-job gallery costs the index and the chunks it shows, never the whole batch. The
// state (status, model, page) lives in the URL's fragment: a view can be bookmarked, and the
// browser's back button goes back through the pages.
(function () {
  "use strict";
  var data = window.nbGallery;
  var grid = document.getElementById("cards");
  var pager = document.getElementById("pager");
  var statusSelect = document.getElementById("filter-status");
  var modelSelect = document.getElementById("filter-model");
  if (!data || !grid || !pager || !statusSelect || !modelSelect) return;

  var KEEP = 24; // chunks kept loaded: a few pages back and forth
  var chunks = new Map(); // chunk number -> its cards (HTML strings)
  var waiting = new Map(); // chunk number -> callbacks waiting for it

  window.nbGalleryCards = function (number, cards) {
    chunks.set(number, cards);
    if (chunks.size > KEEP) chunks.delete(chunks.keys().next().value);
    var callbacks = waiting.get(number) || [];
    waiting.delete(number);
    callbacks.forEach(function (callback) { callback(cards); });
  };

  function load(number) {
    if (chunks.has(number)) return Promise.resolve(chunks.get(number));
    return new Promise(function (resolve, reject) {
      var callbacks = waiting.get(number);
      if (callbacks) { callbacks.push(resolve); return; }
      waiting.set(number, [resolve]);
      var script = document.createElement("script");
      script.src = "gallery/cards-" + String(number).padStart(5, "0") + ".js";
      script.onload = function () { script.remove(); };
      script.onerror = function () {
        waiting.delete(number);
        reject(new Error("cannot load " + script.src + ": keep the gallery folder beside index.html"));
      };
      document.head.appendChild(script);
    });
  }

  function current() {
    var params = new URLSearchParams(location.hash.slice(1));
    var page = parseInt(params.get("page") || "1", 10);
    return {
      status: params.get("status") || "",
      model: params.get("model") || "",
      page: page > 0 ? page : 1
    };
  }

  function link(view) {
    var params = new URLSearchParams();
    if (view.status) params.set("status", view.status);
    if (view.model) params.set("model", view.model);
    if (view.page > 1) params.set("page", String(view.page));
    return "#" + params.toString();
  }

  function matching(view) {
    var status = view.status ? data.statusCodes[view.status] : null;
    var model = view.model ? data.models.indexOf(view.model) : -1;
    if ((view.status && !status) || (view.model && model < 0)) return [];
    var modelCode = model >= 0 ? String.fromCharCode(48 + model) : null;
    var found = [];
    for (var i = 0; i < data.total; i++) {
      if (status && data.statuses.charAt(i) !== status) continue;
      if (modelCode && data.modelOf.charAt(i) !== modelCode) continue;
      found.push(i);
    }
    return found;
  }

  function pagerLink(text, view, enabled) {
    var element = document.createElement(enabled ? "a" : "span");
    element.textContent = text;
    if (enabled) element.href = link(view);
    return element;
  }

  function drawPager(view, pages, count) {
    var here = { status: view.status, model: view.model, page: view.page };
    function at(page) { return { status: here.status, model: here.model, page: page }; }
    var label = document.createElement("span");
    label.className = "where";
    label.textContent = "page " + view.page + " of " + pages + " · " + count +
      (count === 1 ? " matching job" : " matching jobs");
    pager.replaceChildren(
      pagerLink("« first", at(1), view.page > 1),
      pagerLink("‹ previous", at(view.page - 1), view.page > 1),
      label,
      pagerLink("next ›", at(view.page + 1), view.page < pages),
      pagerLink("last »", at(pages), view.page < pages)
    );
  }

  var drawing = 0;
  function draw() {
    var view = current();
    statusSelect.value = view.status;
    modelSelect.value = view.model;
    var found = matching(view);
    var pages = Math.max(1, Math.ceil(found.length / data.pageSize));
    view.page = Math.min(view.page, pages);
    var shown = found.slice((view.page - 1) * data.pageSize, view.page * data.pageSize);
    var numbers = [];
    shown.forEach(function (i) {
      var number = Math.floor(i / data.chunkSize);
      if (numbers.indexOf(number) < 0) numbers.push(number);
    });
    var mine = ++drawing;
    Promise.all(numbers.map(load)).then(function (loaded) {
      if (mine !== drawing) return; // a newer view was asked for meanwhile
      var byNumber = new Map();
      numbers.forEach(function (number, k) { byNumber.set(number, loaded[k]); });
      grid.innerHTML = shown.map(function (i) {
        return byNumber.get(Math.floor(i / data.chunkSize))[i % data.chunkSize];
      }).join("\n");
      drawPager(view, pages, found.length);
      grid.setAttribute("data-view", link(view));
      window.scrollTo(0, 0);
    }, function (error) {
      pager.textContent = error.message;
    });
  }

  function choose() {
    location.hash = link({ status: statusSelect.value, model: modelSelect.value, page: 1 });
  }
  statusSelect.addEventListener("change", choose);
  modelSelect.addEventListener("change", choose);
  window.addEventListener("hashchange", draw);
  document.documentElement.classList.add("scripted");
  draw();
})();
