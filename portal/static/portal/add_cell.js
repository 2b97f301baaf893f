// Adding a cell the model missed (portal/templates/analyses/_cells_panel.html): drag a box on the frame and
// the form's x0, y0, x1, y1 are filled in image pixels (the picture is shown scaled). No framework, no CDN;
// without script the form still works with the corners typed in.
(function () {
  "use strict";
  var form = document.getElementById("add-cell");
  var view = document.querySelector("#cells .cellview");
  var img = view && view.querySelector("img");
  if (!form || !img) { return; }
  var box = document.createElement("div");
  box.className = "draw-box";
  box.hidden = true;
  view.appendChild(box);
  view.classList.add("drawable");
  img.draggable = false;  // dragging draws a box, it does not pick the picture up
  img.addEventListener("dragstart", function (ev) { ev.preventDefault(); });
  var start = null;

  function point(ev) {
    var r = img.getBoundingClientRect();
    var v = view.getBoundingClientRect();
    var x = Math.min(Math.max(ev.clientX - r.left, 0), r.width);
    var y = Math.min(Math.max(ev.clientY - r.top, 0), r.height);
    return {
      vx: x + r.left - v.left,
      vy: y + r.top - v.top,
      x: Math.round(x * img.naturalWidth / r.width),
      y: Math.round(y * img.naturalHeight / r.height)
    };
  }

  function show(a, b) {
    box.hidden = false;
    box.style.left = Math.min(a.vx, b.vx) + "px";
    box.style.top = Math.min(a.vy, b.vy) + "px";
    box.style.width = Math.abs(b.vx - a.vx) + "px";
    box.style.height = Math.abs(b.vy - a.vy) + "px";
  }

  function fill(a, b) {
    form.elements.x0.value = Math.min(a.x, b.x);
    form.elements.y0.value = Math.min(a.y, b.y);
    form.elements.x1.value = Math.max(a.x, b.x);
    form.elements.y1.value = Math.max(a.y, b.y);
    form.elements.label.focus();
  }

  view.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) { return; }
    ev.preventDefault();
    start = point(ev);
    if (view.setPointerCapture) { view.setPointerCapture(ev.pointerId); }
    show(start, start);
  });
  view.addEventListener("pointermove", function (ev) {
    if (start) { show(start, point(ev)); }
  });
  view.addEventListener("pointerup", function (ev) {
    if (!start) { return; }
    var end = point(ev);
    show(start, end);
    fill(start, end);
    start = null;
  });
}());
