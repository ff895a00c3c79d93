/* boneseg report: plain JavaScript, no libraries, nothing fetched.
   Scores come inlined in #report-data; an opened image loads full/NNNN.jpg as an <img> and
   masks/NNNN.js as a <script> (both work from file://), which calls BonesegReport.masks(i, data). */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const C = D.classes.length, M = D.models.length, N = D.images.length;
  const $ = (id) => document.getElementById(id);
  const stem = (i) => String(i).padStart(4, "0");
  const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
  // A missing value ("", null, NaN: no truth, or a column that has no mean) shows as a dash, never as 0.
  const missing = (v) => v == null || v === "" || Number.isNaN(Number(v));
  const fmt = (v, digits = 4) => (missing(v) ? "—" : Number(v).toFixed(digits));
  const mix = (...cs) => [0, 1, 2].map((k) => cs.reduce((a, c) => a + c[k], 0) / cs.length);
  const avg = (xs) => xs.reduce((a, b) => a + b, 0) / (xs.length || 1);
  const range = (n) => Array.from({ length: n }, (_, i) => i);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "onclick") node.addEventListener("click", v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }
  function swatch(colour, label) {
    return el("span", {}, el("span", { class: "swatch", style: `background:${rgb(colour)}` }), label);
  }
  function imageLink(i, classIndex) {
    return el("a", { class: "image-link", text: D.images[i], onclick: () => viewer.open(i, classIndex) });
  }

  // -- scores -------------------------------------------------------------------------------------
  const classDice = (m) => range(C).map((c) => avg(range(N).map((i) => D.dice[m][i][c])));
  const imageWorst = (m, i) => {
    const row = D.dice[m][i];
    const c = row.indexOf(Math.min(...row));
    return { c, v: row[c] };
  };
  const agreementWorst = (i) => {
    const row = D.similarity.per_image[i];
    const c = row.indexOf(Math.min(...row));
    return { c, v: row[c] };
  };
  const diceClass = (v) => (v < 0.7 ? "bad" : v < 0.9 ? "mid" : "");

  // -- sortable tables ----------------------------------------------------------------------------
  // columns: [{label, render?(value,row) -> node|text, cls?(value)}]; rows: arrays of raw values.
  function sortableTable(columns, rows, foot) {
    const table = el("table", { class: "sortable" });
    const head = el("tr");
    const body = el("tbody");
    let sorted = { col: -1, dir: 1 };
    const fill = () => {
      body.replaceChildren(...rows.map((row) => rowNode(columns, row)));
    };
    columns.forEach((col, k) => {
      const th = el("th", { class: "sortable", text: col.label });
      th.addEventListener("click", () => {
        sorted = { col: k, dir: sorted.col === k ? -sorted.dir : 1 };
        rows.sort((a, b) => (a[k] < b[k] ? -1 : a[k] > b[k] ? 1 : 0) * sorted.dir);
        head.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        th.classList.add(sorted.dir > 0 ? "sorted-asc" : "sorted-desc");
        fill();
      });
      head.append(th);
    });
    table.append(el("thead", {}, head), body);
    if (foot) table.append(el("tfoot", {}, ...foot.map((row) => rowNode(columns, row, "mean"))));
    fill();
    return table;
  }
  function rowNode(columns, row, cls) {
    const tr = el("tr", cls ? { class: cls } : {});
    columns.forEach((col, k) => {
      const v = row[k];
      const td = el("td", col.cls ? { class: col.cls(v) } : {});
      const shown = col.render ? col.render(v, row) : typeof v === "number" ? fmt(v) : v;
      td.append(shown instanceof Node ? shown : String(shown));
      tr.append(td);
    });
    return tr;
  }

  // -- summary ------------------------------------------------------------------------------------
  function summary() {
    const notes = $("notes");
    for (const note of D.notes) notes.append(el("p", { class: "notes", text: "note: " + note }));
    const box = $("summary-table");
    const name = { label: "class", render: (v) => (D.classes.includes(v) ? swatch(D.palette[D.classes.indexOf(v)], v) : v) };
    if (D.labels) {
      const dice = range(M).map(classDice);
      const columns = [name, ...D.models.map((m) => ({ label: `Dice ${m}`, cls: diceClass }))];
      const gtMean = range(C).map((c) => avg(range(N).map((i) => D.gt_area[i][c])));
      const ratio = range(C).map((c) => {
        const gt = range(N).reduce((a, i) => a + D.gt_area[i][c], 0);
        return gt ? range(N).reduce((a, i) => a + D.pred_area[0][i][c], 0) / gt : NaN;
      });
      columns.push({ label: `area pred/true (${D.models[0]})`, render: (v) => fmt(v, 3) },
                   { label: "true px (mean)", render: (v) => fmt(v, 0) });
      const rows = range(C).map((c) => [D.classes[c], ...dice.map((d) => d[c]), ratio[c], gtMean[c]]);
      rows.sort((a, b) => a[1] - b[1]);
      box.append(el("h2", { text: `Dice per class over ${N} image(s) (worst first; click a header to sort)` }),
        sortableTable(columns, rows, [["mean", ...dice.map(avg), "", ""]]));
    } else {
      const columns = [name, ...D.models.flatMap((m) => [
        { label: `mean px ${m}`, render: (v) => fmt(v, 0) }, { label: `empty ${m}`, render: (v) => String(v) }])];
      const rows = range(C).map((c) => [D.classes[c], ...range(M).flatMap((m) => [
        avg(range(N).map((i) => D.pred_area[m][i][c])), range(N).filter((i) => D.pred_area[m][i][c] === 0).length])]);
      box.append(el("h2", { text: `Predicted area per class over ${N} image(s) (no labels: --gt DATA scores them)` }),
        sortableTable(columns, rows));
    }
  }

  // -- charts -------------------------------------------------------------------------------------
  const SERIES = ["#1a5fb4", "#e66100", "#26a269", "#9141ac", "#c01c28", "#865e3c"];
  // Horizontal bars with an x axis (ticks, labels, grid lines), a y axis and an optional reference line.
  function barChart(title, labels, series, max, options = {}) {
    const rowH = 6 + 9 * series.length, left = 90, width = 380, top = 24;
    const plotH = labels.length * rowH;
    const height = top + plotH + 58;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", left + width + 50);
    svg.setAttribute("height", height);
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text != null) node.textContent = text;
      svg.append(node);
      return node;
    };
    const x = (v) => left + Math.max(0, Math.min(1, v / max)) * width;
    add("text", { x: 0, y: 14, "font-weight": "bold" }, title);
    const ticks = niceTicks(max);
    ticks.forEach((t) => {
      add("line", { x1: x(t), x2: x(t), y1: top, y2: top + plotH, stroke: "#e3e6ea", class: "grid" });
      add("line", { x1: x(t), x2: x(t), y1: top + plotH, y2: top + plotH + 4, stroke: "#1d232a", class: "tick" });
      add("text", { x: x(t), y: top + plotH + 16, "text-anchor": "middle", class: "tick-label" }, tickText(t));
    });
    labels.forEach((label, r) => {
      const y = top + r * rowH;
      add("text", { x: left - 6, y: y + rowH / 2 + 4, "text-anchor": "end" }, label);
      series.forEach((s, k) => {
        const v = s.values[r];
        const w = Number.isFinite(v) ? x(v) - left : 0;
        add("rect", { x: left, y: y + 3 + k * 9, width: w, height: 8, fill: SERIES[k % SERIES.length] })
          .append(Object.assign(document.createElementNS(ns, "title"), { textContent: `${s.name}: ${fmt(v)}` }));
      });
    });
    add("line", { x1: left, x2: left, y1: top, y2: top + plotH, stroke: "#1d232a", class: "axis" });
    add("line", { x1: left, x2: left + width, y1: top + plotH, y2: top + plotH, stroke: "#1d232a", class: "axis" });
    if (options.axis) {
      add("text", { x: left + width / 2, y: top + plotH + 30, "text-anchor": "middle" }, options.axis);
    }
    if (options.reference != null && options.reference <= max) {
      add("line", { x1: x(options.reference), x2: x(options.reference), y1: top - 4, y2: top + plotH,
        stroke: "#c01c28", "stroke-width": 1.5, "stroke-dasharray": "4 3", class: "reference" });
      add("text", { x: x(options.reference) + 4, y: top - 4, fill: "#c01c28" }, options.referenceLabel || "");
    }
    const legendY = top + plotH + 48;
    series.forEach((s, k) => {
      add("rect", { x: left + k * 120, y: legendY - 9, width: 10, height: 10, fill: SERIES[k % SERIES.length] });
      add("text", { x: left + k * 120 + 14, y: legendY }, s.name);
    });
    return el("div", { class: "chart" }, svg);
  }
  // About five round tick values from 0 to max (steps of 1, 2 or 5 times a power of ten).
  function niceTicks(max) {
    const raw = max / 5, power = 10 ** Math.floor(Math.log10(raw || 1));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || power;
    const out = [];
    for (let t = 0; t <= max + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }
  function tickText(t) {
    if (t >= 10000) return `${Number((t / 1000).toPrecision(3))}k`;
    return Number.isInteger(t) ? String(t) : String(Number(t.toPrecision(3)));
  }
  function charts() {
    const box = $("chart-list");
    if (D.labels) {
      const dice = range(M).map(classDice);
      const order = range(C).sort((a, b) => avg(dice.map((d) => d[a])) - avg(dice.map((d) => d[b])));
      box.append(barChart("Dice per class (worst at the top)", order.map((c) => D.classes[c]),
        D.models.map((m, k) => ({ name: m, values: order.map((c) => dice[k][c]) })), 1,
        { axis: "Dice (0 to 1)", reference: 1 }));
      const ratios = range(M).map((m) => order.map((c) => {
        const gt = range(N).reduce((a, i) => a + D.gt_area[i][c], 0);
        return gt ? range(N).reduce((a, i) => a + D.pred_area[m][i][c], 0) / gt : NaN;
      }));
      const maxRatio = Math.max(1.5, ...ratios.flat().filter(Number.isFinite));
      box.append(barChart("Area prediction / truth (1 = same area)", order.map((c) => D.classes[c]),
        D.models.map((m, k) => ({ name: m, values: ratios[k] })), maxRatio,
        { axis: "predicted / true pixels", reference: 1, referenceLabel: "1 = same area" }));
    } else {
      const area = range(M).map((m) => range(C).map((c) => avg(range(N).map((i) => D.pred_area[m][i][c]))));
      box.append(barChart("Mean predicted area per class (pixels)", D.classes,
        D.models.map((m, k) => ({ name: m, values: area[k] })), Math.max(1, ...area.flat()),
        { axis: "pixels per image" }));
    }
    if (D.similarity) {
      box.append(barChart("Mean pairwise model-vs-model Dice per class", D.classes,
        [{ name: "agreement", values: range(C).map((c) => avg(range(N).map((i) => D.similarity.per_image[i][c]))) }], 1,
        { axis: "Dice (0 to 1)", reference: 1 }));
    }
  }

  // -- gallery ------------------------------------------------------------------------------------
  const sorts = [];
  if (D.labels) {
    D.models.forEach((m, k) => sorts.push({ name: `worst class Dice (${m})`, key: (i) => imageWorst(k, i).v,
      caption: (i) => { const w = imageWorst(k, i); return `worst ${D.classes[w.c]} ${fmt(w.v, 3)}`; } }));
  }
  if (D.similarity) {
    sorts.push({ name: "least model agreement", key: (i) => agreementWorst(i).v,
      caption: (i) => { const w = agreementWorst(i); return `agreement ${D.classes[w.c]} ${fmt(w.v, 3)}`; } });
  }
  // The most uncertain class of an image by a map of uncertainty.csv (its mean over the class's region).
  const U = D.uncertainty;
  const uncertainWorst = (map, i) => {
    const row = U.table[map][i].map((v) => (v == null ? -1 : v));
    const c = row.indexOf(Math.max(...row));
    return { c, v: row[c] };
  };
  if (U) {
    U.maps.forEach((map) => sorts.push({ name: `most uncertain class (${map})`, key: (i) => -uncertainWorst(map, i).v,
      caption: (i) => { const w = uncertainWorst(map, i); return `${map} ${D.classes[w.c]} ${fmt(w.v, 3)}`; } }));
  }
  sorts.push({ name: "image name", key: (i) => D.images[i], caption: () => "" });
  let galleryOrder = range(N);

  function gallery() {
    const select = $("gallery-sort");
    sorts.forEach((s, k) => select.append(el("option", { value: k, text: s.name })));
    select.addEventListener("change", () => drawGallery(sorts[select.value]));
    const legend = $("gallery-legend");
    if (D.labels) {
      legend.append(`${D.models[0]} vs labels:`, swatch(D.agreement[0], "correct"),
        swatch(D.agreement[1], "false positive"), swatch(D.agreement[2], "false negative"),
        swatch(mix(D.agreement[1], D.agreement[2]), "false positive + false negative (two classes)"));
    } else {
      legend.append(`prediction of ${D.models[0]} in class colours`);
    }
    drawGallery(sorts[0]);
  }
  function drawGallery(sort) {
    galleryOrder = range(N).sort((a, b) => {
      const ka = sort.key(a), kb = sort.key(b);
      return ka < kb ? -1 : ka > kb ? 1 : a - b;
    });
    $("gallery-items").replaceChildren(...galleryOrder.map((i) => el("div", { class: "item", "data-index": i,
      onclick: () => viewer.open(i) },
    el("img", { src: `thumbs/${stem(i)}.jpg`, loading: "lazy", alt: D.images[i] }),
    el("div", { class: "caption" }, el("strong", { text: D.images[i], title: D.images[i] }), el("br"),
      sort.caption(i)))));
  }

  // -- disagreement and suspects ------------------------------------------------------------------
  function disagreement() {
    if (!D.similarity) return;
    document.querySelector('[data-tab="disagreement"]').hidden = false;
    const box = $("disagreement-body");
    box.append(el("h2", { text: "Model-vs-model Dice (mean over classes and images)" }),
      sortableTable([{ label: "" }, ...D.models.map((m) => ({ label: m }))],
        D.models.map((m, a) => [m, ...D.similarity.mean[a]])));
    const rows = range(C).map((c) => [D.classes[c], avg(range(N).map((i) => D.similarity.per_image[i][c]))]);
    rows.sort((a, b) => a[1] - b[1]);
    box.append(el("h2", { text: "Mean pairwise Dice per class (least agreement first)" }),
      sortableTable([{ label: "class" }, { label: "pairwise Dice", cls: diceClass }], rows));
    const images = range(N).map((i) => { const w = agreementWorst(i); return [i, D.classes[w.c], w.v]; });
    images.sort((a, b) => a[2] - b[2]);
    box.append(el("h2", { text: "Images the models disagree on most (open one to compare the models)" }),
      sortableTable([{ label: "image", render: (v, row) => imageLink(v, D.classes.indexOf(row[1])) },
        { label: "class" }, { label: "pairwise Dice", cls: diceClass }], images.slice(0, 50)));
  }
  function suspects() {
    if (!D.suspects) return;
    document.querySelector('[data-tab="suspects"]').hidden = false;
    const box = $("suspects-body");
    box.append(el("h2", { text: `Suspect labels from the audit (${D.suspects.rows.length}, most suspect first)` }));
    if (D.suspects.outside) {
      box.append(el("p", { class: "notes", text: `${D.suspects.outside} suspect(s) name images outside this report` }));
    }
    box.append(sortableTable([{ label: "image", render: (v, row) => imageLink(v, D.classes.indexOf(row[1])) },
      { label: "class" }, { label: "kind" }, { label: "score" }],
    D.suspects.rows.map((s) => [s.image, D.classes[s.class], s.kind, s.score])));
  }

  function uncertaintyTab() {
    if (!U) return;
    document.querySelector('[data-tab="uncertainty"]').hidden = false;
    const box = $("uncertainty-body");
    const mean = (map, c) => {
      const vs = range(N).map((i) => U.table[map][i][c]).filter((v) => v != null);
      return vs.length ? avg(vs) : NaN;
    };
    const rows = range(C).map((c) => [D.classes[c], ...U.maps.map((map) => mean(map, c))]);
    rows.sort((a, b) => b[1] - a[1]);
    box.append(el("h2", { text: `Mean uncertainty per class over ${N} image(s) (most uncertain first; ` +
      "each image's value is the map's mean over the class's predicted or doubtful pixels)" }),
    sortableTable([{ label: "class" }, ...U.maps.map((map) => ({ label: map }))], rows));
    const map = U.maps[0];
    const images = range(N).map((i) => { const w = uncertainWorst(map, i); return [i, D.classes[w.c], w.v]; });
    images.sort((a, b) => b[2] - a[2]);
    box.append(el("h2", { text: `Images with the most uncertain class (${map}; open one to see its heat map)` }),
      sortableTable([{ label: "image", render: (v, row) => imageLink(v, D.classes.indexOf(row[1])) },
        { label: "class" }, { label: map }], images.slice(0, 50)));
  }

  // -- the image viewer ---------------------------------------------------------------------------
  const maskData = {};
  const waiting = {};
  window.BonesegReport = {
    masks(i, data) { maskData[i] = data; (waiting[i] || []).forEach((f) => f(data)); delete waiting[i]; },
  };
  function loadMasks(i) {
    if (maskData[i]) return Promise.resolve(maskData[i]);
    return new Promise((resolve, reject) => {
      (waiting[i] = waiting[i] || []).push(resolve);
      const script = el("script", { src: `masks/${stem(i)}.js` });
      script.addEventListener("error", () => reject(new Error(`cannot load masks/${stem(i)}.js`)));
      document.body.append(script);
    });
  }
  function parseRuns(text) {
    const v = (text || "").trim() ? text.trim().split(/\s+/).map(Number) : [];
    const runs = new Int32Array(v.length);
    for (let k = 0; k < v.length; k += 2) { runs[k] = v[k] - 1; runs[k + 1] = v[k] - 1 + v[k + 1]; }
    return runs; // [start, end) pairs, 0-based
  }

  const viewer = {
    i: 0, model: 0, mode: D.labels ? "gt" : "pred", zoom: 1, enabled: new Array(C).fill(true), renders: 0, runs: {},
    init() {
      const model = $("viewer-model");
      D.models.forEach((m, k) => model.append(el("option", { value: k, text: m })));
      model.addEventListener("change", () => { this.model = Number(model.value); this.modes(); this.render(); });
      $("viewer-mode").addEventListener("change", (e) => { this.mode = e.target.value; this.render(); });
      $("viewer-close").addEventListener("click", () => this.close());
      $("viewer-prev").addEventListener("click", () => this.step(-1));
      $("viewer-next").addEventListener("click", () => this.step(1));
      $("zoom-fit").addEventListener("click", () => this.setZoom("fit"));
      $("zoom-full").addEventListener("click", () => this.setZoom(1));
      $("zoom-in").addEventListener("click", () => this.setZoom(this.zoom * 1.5));
      $("zoom-out").addEventListener("click", () => this.setZoom(this.zoom / 1.5));
      $("classes-all").addEventListener("click", () => this.only(null));
      if (U) {
        $("heat-controls").hidden = false;
        const heat = $("viewer-heat-map");
        U.maps.forEach((m) => heat.append(el("option", { value: m, text: m })));
        heat.hidden = U.maps.length < 2;
        heat.addEventListener("change", () => this.heat());
        $("viewer-heat-on").addEventListener("change", () => this.heat());
      }
      $("classes-none").addEventListener("click", () => { this.enabled.fill(false); this.toggles(); this.render(); });
      document.addEventListener("keydown", (e) => {
        if ($("viewer").hidden) return;
        if (e.key === "Escape") this.close();
        else if (e.key === "ArrowLeft") this.step(-1);
        else if (e.key === "ArrowRight") this.step(1);
      });
      this.modes();
    },
    modes() {
      const select = $("viewer-mode");
      const options = [["pred", "prediction (class colours)"]];
      if (D.labels) options.push(["gt", "errors vs labels"], ["labels", "labels (class colours)"]);
      D.models.forEach((m, k) => { if (k !== this.model) options.push([`vs${k}`, `agreement with ${m}`]); });
      options.push(["none", "image only"]);
      if (!options.some(([v]) => v === this.mode)) this.mode = D.labels ? "gt" : "pred";
      select.replaceChildren(...options.map(([v, t]) => el("option", { value: v, text: t })));
      select.value = this.mode;
    },
    open(i, classIndex) {
      $("viewer").hidden = false;
      this.show(i);
      if (classIndex != null && classIndex >= 0) this.only(classIndex);
    },
    close() { $("viewer").hidden = true; },
    step(d) {
      const k = galleryOrder.indexOf(this.i);
      this.show(galleryOrder[(k + d + N) % N]);
    },
    show(i) {
      this.i = i;
      this.runs = {};
      const [h, w] = D.shapes[i];
      $("viewer-title").textContent = `${D.images[i]} (${w}×${h})`;
      const image = $("viewer-image");
      image.hidden = !D.has_images;  // without images the masks are drawn on the black stage
      if (D.has_images) image.src = `full/${stem(i)}.jpg`;
      const canvas = $("viewer-canvas");
      canvas.width = w;
      canvas.height = h;
      canvas.getContext("2d").clearRect(0, 0, w, h);
      this.heat();
      this.setZoom("fit");
      this.toggles();
      $("viewer-status").textContent = "loading masks…";
      loadMasks(i).then(() => { if (this.i === i) this.render(); },
        (err) => { $("viewer-status").textContent = err.message; });
    },
    // The uncertainty heat overlay (largest value over the classes), above the masks while toggled on.
    heat() {
      if (!U) return;
      const img = $("viewer-heat");
      img.hidden = !$("viewer-heat-on").checked;
      if (!img.hidden) img.src = `uncertainty/${stem(this.i)}-${$("viewer-heat-map").value}.png`;
    },
    setZoom(z) {
      const [h, w] = D.shapes[this.i];
      const scroll = $("stage-scroll");
      if (z === "fit") z = Math.min(scroll.clientWidth / w, scroll.clientHeight / h) || 1;
      this.zoom = Math.min(8, Math.max(0.05, z));
      const stage = $("stage");
      stage.style.width = `${w * this.zoom}px`;
      stage.style.height = `${h * this.zoom}px`;
      $("zoom-level").textContent = `${Math.round(this.zoom * 100)} %`;
    },
    only(c) {
      this.enabled.fill(c == null);
      if (c != null) this.enabled[c] = true;
      this.toggles();
      this.render();
    },
    toggles() {
      const list = $("class-list");
      list.replaceChildren(...range(C).map((c) => {
        const box = el("input", { type: "checkbox", "data-class": c });
        box.checked = this.enabled[c];
        box.addEventListener("change", () => { this.enabled[c] = box.checked; this.render(); });
        const score = D.labels ? ` ${fmt(D.dice[this.model][this.i][c], 3)}` : "";
        return el("label", {}, box, swatch(D.palette[c], D.classes[c] + score));
      }));
    },
    source(key, c) {
      const id = `${key}:${c}`;
      if (!this.runs[id]) {
        const data = maskData[this.i];
        this.runs[id] = parseRuns(key === "gt" ? data.gt[c] : data.pred[Number(key)][c]);
      }
      return this.runs[id];
    },
    render() {
      const data = maskData[this.i];
      if (!data) return;
      const [h, w] = D.shapes[this.i];
      const canvas = $("viewer-canvas");
      const ctx = canvas.getContext("2d");
      const out = ctx.createImageData(w, h);
      const mode = this.mode;
      const legend = $("viewer-legend");
      const classes = range(C).filter((c) => this.enabled[c]);
      if (mode === "pred" || mode === "labels") {
        const key = mode === "pred" ? String(this.model) : "gt";
        paintColours(out.data, w * h, classes.map((c) => [this.source(key, c), D.palette[c]]), 0.45);
        legend.replaceChildren(mode === "pred" ? `${D.models[this.model]} in class colours` : "labels in class colours");
      } else if (mode !== "none") {
        const ref = mode === "gt" ? "gt" : mode.slice(2);
        paintAgreement(out.data, w * h, classes.map((c) => [this.source(String(this.model), c), this.source(ref, c)]));
        const [a, b] = [D.models[this.model], ref === "gt" ? "labels" : D.models[Number(ref)]];
        legend.replaceChildren(swatch(D.agreement[0], "both"), swatch(D.agreement[1], `only ${a}`),
          swatch(D.agreement[2], `only ${b}`), swatch(mix(D.agreement[1], D.agreement[2]), "both errors (two classes)"));
      } else {
        legend.replaceChildren();
      }
      ctx.putImageData(out, 0, 0);
      this.renders += 1;
      canvas.dataset.renders = this.renders;
      $("viewer-status").textContent = `${classes.length} of ${C} classes shown`;
    },
  };

  // Average the colours of the masks covering each pixel (as boneseg.plots.overlay does).
  function paintColours(px, n, layers, alpha) {
    const sum = new Uint16Array(n * 3), count = new Uint8Array(n);
    for (const [runs, colour] of layers) {
      for (let k = 0; k < runs.length; k += 2) {
        for (let p = runs[k]; p < runs[k + 1]; p++) {
          sum[3 * p] += colour[0]; sum[3 * p + 1] += colour[1]; sum[3 * p + 2] += colour[2]; count[p] += 1;
        }
      }
    }
    const a = Math.round(alpha * 255);
    for (let p = 0; p < n; p++) {
      if (count[p]) {
        px[4 * p] = sum[3 * p] / count[p]; px[4 * p + 1] = sum[3 * p + 1] / count[p];
        px[4 * p + 2] = sum[3 * p + 2] / count[p]; px[4 * p + 3] = a;
      }
    }
  }
  // Per class: both (bit 1), only the first (bit 2), only the reference (bit 4); colours mixed per pixel
  // (as boneseg.plots.overlay_errors does).
  function paintAgreement(px, n, pairs) {
    const flags = new Uint8Array(n), inA = new Uint8Array(n), inB = new Uint8Array(n);
    pairs.forEach(([a, b], c) => {
      const tag = (c % 255) + 1;
      for (let k = 0; k < a.length; k += 2) for (let p = a[k]; p < a[k + 1]; p++) inA[p] = tag;
      for (let k = 0; k < b.length; k += 2) {
        for (let p = b[k]; p < b[k + 1]; p++) { inB[p] = tag; flags[p] |= inA[p] === tag ? 1 : 4; }
      }
      for (let k = 0; k < a.length; k += 2) for (let p = a[k]; p < a[k + 1]; p++) if (inB[p] !== tag) flags[p] |= 2;
    });
    const colours = D.agreement, a = Math.round(0.5 * 255);
    for (let p = 0; p < n; p++) {
      const f = flags[p];
      if (!f) continue;
      let r = 0, g = 0, b = 0, k = 0;
      for (let bit = 0; bit < 3; bit++) {
        if (f & (1 << bit)) { r += colours[bit][0]; g += colours[bit][1]; b += colours[bit][2]; k++; }
      }
      px[4 * p] = r / k; px[4 * p + 1] = g / k; px[4 * p + 2] = b / k; px[4 * p + 3] = a;
    }
  }

  // -- tabs ---------------------------------------------------------------------------------------
  function showTab() {
    const name = (location.hash || "#summary").slice(1);
    const tab = document.querySelector(`[data-tab="${name}"]`) ? name : "summary";
    document.querySelectorAll("main > section").forEach((s) => s.classList.toggle("active", s.id === tab));
    document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  }
  window.addEventListener("hashchange", showTab);

  summary();
  charts();
  gallery();
  disagreement();
  suspects();
  uncertaintyTab();
  viewer.init();
  showTab();
  document.body.dataset.ready = "true";
})();
