// The sign-off form says what signing will record before it is sent (no framework, no CDN). As the
// reviewer changes the decision or the class, both buttons say "Sign off as <full class name> (how)"
// with the texts of portal.analyses.forms.SIGN_OFF_TEXTS, the hidden recorded_label carries that class
// (the server refuses a form whose choices would record another), the class list is disabled while
// "agree" is chosen (so it cannot contradict the decision), and the buttons are disabled while no
// class is decided. Without the script the server renders the same text and refuses a mismatch.
(function () {
  "use strict";
  var form = document.getElementById("sign-off");
  var config = document.getElementById("sign-off-config");
  if (!form || !config) { return; }
  config = JSON.parse(config.textContent);
  var select = form.querySelector("select[name=final_label]");
  var recorded = form.querySelector("input[name=recorded_label]");
  var buttons = form.querySelectorAll("button[data-sign-off]");

  function update() {
    var checked = form.querySelector("input[name=decision]:checked");
    var decision = checked ? checked.value : "";
    if (select) { select.disabled = decision === "agree"; }
    var label = "";
    if (decision === "agree") { label = config.consensus; }
    if (decision === "reclassify" && select && config.names[select.value]) { label = select.value; }
    var kind = !label ? "incomplete" : decision === "agree" ? "agree" : config.consensus ? "reclassify" : "set";
    var text = config.texts[kind].replace("{name}", config.names[label] || label);
    recorded.value = label;
    Array.prototype.forEach.call(buttons, function (button) {
      button.textContent = text + (label ? button.getAttribute("data-sign-off") : "");
      button.disabled = !label;
    });
  }
  form.addEventListener("change", update);
  update();
})();
