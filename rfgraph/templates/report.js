"use strict";
// rfgraph report: sortable tables and the hover view. Every number is looked up in the embedded
// JSON (computed by rfgraph's Python API); nothing is recomputed here and nothing is fetched.
(function () {
  function cellKey(row, col) {
    var cell = row.cells[col];
    var key = cell.getAttribute("data-sort");
    if (key === null) { key = cell.textContent.trim(); }
    var n = Number(key);
    return key !== "" && !isNaN(n) ? n : key.toLowerCase();
  }

  function sortTable(table, col, th) {
    var body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, col), y = cellKey(b, col);
      var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return ascending ? c : -c;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
      });
    });
  });

  var data = JSON.parse(document.getElementById("rf-data").textContent).interactive;
  var select = document.getElementById("iv-endpoint");
  if (!select || !data.default) { return; }
  var grid = document.getElementById("iv-grid");
  var cellRect = document.getElementById("iv-cell");
  var box = document.getElementById("rf-box");
  var centre = document.getElementById("rf-centre");
  var readout = document.getElementById("iv-readout");
  var ep = null, rows = 1, cols = 1;
  var GRID_PX = 320;

  function setEndpoint(name) {
    ep = data.endpoints[name];
    rows = data.ndim === 2 ? ep.units[0] : 1;
    cols = data.ndim === 2 ? ep.units[1] : ep.units[0];
    var scale = GRID_PX / Math.max(rows, cols);
    grid.setAttribute("viewBox", "0 0 " + cols + " " + rows);
    grid.setAttribute("width", Math.max(1, Math.round(cols * scale)));
    grid.setAttribute("height", Math.max(1, Math.round(rows * scale)));
    grid.setAttribute("data-units", rows + "," + cols);
    document.getElementById("iv-gridlines").style.display = Math.max(rows, cols) <= 64 ? "" : "none";
    showCell(Math.floor((rows - 1) / 2), Math.floor((cols - 1) / 2));
  }

  function clip(lo, hi, n) { return [Math.max(lo, 0), Math.min(hi, n - 1)]; }

  function showCell(i, j) {
    var index = data.ndim === 2 ? [i, j] : [j];
    var region = index.map(function (u, a) { return ep.regions[a][u]; });
    var centres = index.map(function (u, a) { return ep.centres[a][u]; });
    var ys = data.ndim === 2 ? region[0] : [0, data.height - 1];
    var xs = data.ndim === 2 ? region[1] : region[0];
    var cy = data.ndim === 2 ? clip(ys[0], ys[1], data.height) : ys;
    var cx = clip(xs[0], xs[1], data.width);
    var inside = cy[0] <= cy[1] && cx[0] <= cx[1];
    box.setAttribute("x", cx[0]);
    box.setAttribute("y", cy[0]);
    box.setAttribute("width", inside ? cx[1] - cx[0] + 1 : 0);
    box.setAttribute("height", inside ? cy[1] - cy[0] + 1 : 0);
    box.setAttribute("data-region", JSON.stringify(region));
    box.setAttribute("data-cell", index.join(","));
    centre.setAttribute("cx", (data.ndim === 2 ? centres[1] : centres[0]) + 0.5);
    centre.setAttribute("cy", (data.ndim === 2 ? centres[0] : (data.height - 1) / 2) + 0.5);
    cellRect.setAttribute("x", j);
    cellRect.setAttribute("y", data.ndim === 2 ? i : 0);
    var clipped = region.some(function (r, a) {
      var n = data.ndim === 2 ? [data.height, data.width][a] : data.width;
      return r[0] < 0 || r[1] > n - 1;
    });
    readout.textContent = "";
    var lines = ["unit (" + index.join(", ") + ") of " + select.value,
                 region.map(function (r, a) { return data.axis_names[a] + " [" + r[0] + ", " + r[1] + "]"; }).join("   ") +
                   (clipped ? "   (reaches into the padding; the box is clipped to the input)" : ""),
                 "centre (" + centres.join(", ") + ");  r = " + ep.r + ",  S = " + ep.S + ",  P = " + ep.P];
    lines.forEach(function (t) { var d = document.createElement("div"); d.textContent = t; readout.appendChild(d); });
  }

  grid.addEventListener("mousemove", function (e) {
    var rect = grid.getBoundingClientRect();
    var j = Math.min(cols - 1, Math.max(0, Math.floor((e.clientX - rect.left) / rect.width * cols)));
    var i = Math.min(rows - 1, Math.max(0, Math.floor((e.clientY - rect.top) / rect.height * rows)));
    showCell(i, j);
  });
  select.addEventListener("change", function () { setEndpoint(select.value); });
  select.value = data.default;
  setEndpoint(data.default);
})();

// Graph zoom: scale the drawing (its viewBox stays), from 10% to 400%, or fit the view's width.
(function () {
  var svg = document.getElementById("graph-svg"), view = document.getElementById("graph-view");
  if (!svg || !view) { return; }
  var w0 = +svg.getAttribute("width"), h0 = +svg.getAttribute("height"), scale = 1;
  function apply() {
    svg.setAttribute("width", Math.round(w0 * scale));
    svg.setAttribute("height", Math.round(h0 * scale));
  }
  document.querySelectorAll("#graph .zoom button").forEach(function (b) {
    b.addEventListener("click", function () {
      var z = b.dataset.zoom;
      if (z === "fit") { scale = Math.min(1, (view.clientWidth - 4) / w0); }
      else if (z === "1") { scale = 1; }
      else { scale = Math.min(4, Math.max(0.1, scale * parseFloat(z))); }
      apply();
    });
  });
})();
