// Live progress of pending analyses (no framework, no CDN). The page marks its progress endpoint
// with data-progress-url; every 2 s the script asks it where each analysis is, updates the status
// and progress texts in place, and reloads the page once when every analysis is final, so the full
// results (labels, charts, heatmaps) appear without the user reloading by hand.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var url = box.getAttribute("data-progress-url");
  var failures = 0;

  function show(item) {
    var status = document.querySelector('[data-analysis-status="' + item.id + '"]');
    if (status) {
      var label = item.stage ? item.stage : item.status;
      if (status.textContent.indexOf(":") >= 0) { label = item.model + ": " + label; }
      status.textContent = label;
      status.setAttribute("title", item.text);
    }
    var text = document.querySelector('[data-analysis-progress="' + item.id + '"]');
    if (text) { text.textContent = item.text; }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json", "X-Portal-Poll": "1" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) {
        failures = 0;
        data.analyses.forEach(show);
        if (data.final) {
          box.textContent = "All analyses have finished; showing the results.";
          window.location.reload();
        } else {
          setTimeout(poll, 2000);
        }
      })
      .catch(function () {
        failures += 1;
        box.textContent = "The portal is not answering right now (" + failures + "); still trying.";
        setTimeout(poll, Math.min(30000, 2000 * failures));
      });
  }
  setTimeout(poll, 1000);
})();
