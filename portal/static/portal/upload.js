// The upload page checks the chosen files before anything is sent (no framework, no CDN): more files
// than one upload takes blocks the form with the limit (the server would refuse the whole request),
// and files over the size limit are named at once (the server refuses them and saves the others).
// The server checks everything again; this only saves a wasted upload.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  var input = form.querySelector("input[type=file][name=images]");
  var list = document.getElementById("images-check");
  var maxFiles = parseInt(form.getAttribute("data-max-files"), 10);
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
  var maxSize = form.getAttribute("data-max-size");

  // as portal.analyses.validation.megabytes and over_the_limit_text
  function megabytes(size) {
    return (size / 1048576).toFixed(1).replace(/\.0$/, "") + " MB";
  }

  function overTheLimit(name, size) {
    var shown = megabytes(size);
    var most = maxSize;
    if (shown === most) {
      shown = size.toLocaleString("en") + " bytes";
      most = maxSize + " (" + maxBytes.toLocaleString("en") + " bytes)";
    }
    return name + ": the file is " + shown + ", over the size limit of " + most + "; it will not be saved.";
  }

  function say(lines) {
    list.textContent = "";
    lines.forEach(function (line) {
      var item = document.createElement("li");
      item.textContent = line;
      list.appendChild(item);
    });
  }

  function check() {
    var files = Array.prototype.slice.call(input.files || []);
    var lines = [];
    var blocking = "";
    if (files.length > maxFiles) {
      blocking = "At most " + maxFiles + " images per upload: you chose " + files.length + ". Choose " + maxFiles + " or fewer.";
      lines.push(blocking);
    }
    files.forEach(function (file) {
      if (file.size > maxBytes) {
        lines.push(overTheLimit(file.name, file.size));
      }
    });
    input.setCustomValidity(blocking);
    say(lines);
  }
  input.addEventListener("change", check);
  form.addEventListener("submit", function (event) {
    check();
    if (!input.checkValidity()) { event.preventDefault(); input.reportValidity(); }
  });
})();
