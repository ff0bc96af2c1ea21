// The xviz report page: rows of the output folder with filters, sort, pages and a full-size viewer.
// Data comes from report/data.js (window.XVIZ_REPORT); every text goes in through textContent and every
// path through encodePath, so a file named `<script>.png` is shown, never run.
"use strict";
(function () {
  const data = window.XVIZ_REPORT;
  const PAGE_SIZE = 50;
  const $ = (id) => document.getElementById(id);
  const state = { predicted: "", target: "", misclassified: false, sort: "name", search: "", page: 0,
                  methods: new Set(data.methods) };

  function encodePath(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }
  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children || []) node.append(child);
    return node;
  }
  function percent(p) {
    return p === null || p === undefined ? "" : (100 * p).toFixed(1) + "%";
  }
  function fillSelect(select, values) {
    for (const v of values) select.append(el("option", { value: v, textContent: v }));
  }

  function problems() {
    const lines = [];
    if (data.missing.length) lines.push(data.missing.length + " file(s) named by the results are missing: " + data.missing.slice(0, 20).join(", ") + (data.missing.length > 20 ? ", ..." : ""));
    if (data.unlisted.length) lines.push(data.unlisted.length + " image file(s) in the folder are not in the results: " + data.unlisted.slice(0, 20).join(", ") + (data.unlisted.length > 20 ? ", ..." : ""));
    if (data.damaged) lines.push(data.damaged + " damaged result line(s) were skipped (an interrupted run?)");
    if (!data.rows.length && !data.evaluation) lines.push("The results list no image yet.");
    if (lines.length) { $("problems").textContent = lines.join("\n"); $("problems").hidden = false; }
  }

  function evaluation() {
    const ev = data.evaluation;
    if (!ev) return;
    const section = $("evaluation");
    section.append(el("h2", { textContent: ev.title || "Evaluation" }));
    if (ev.columns && ev.rows) {
      const head = el("tr", {}, ev.columns.map((c) => el("th", { textContent: c })));
      const body = ev.rows.map((r) => el("tr", {}, r.map((c) => el("td", { textContent: String(c) }))));
      section.append(el("table", { className: "ranking" }, [el("thead", {}, [head]), el("tbody", {}, body)]));
    }
    for (const figure of ev.figures || []) {
      const img = el("img", { src: encodePath(figure.path), alt: figure.caption || figure.path, loading: "lazy" });
      section.append(el("figure", {}, [img, el("figcaption", { textContent: figure.caption || "" })]));
    }
    section.hidden = false;
  }

  function matches(row) {
    if (state.predicted && row.predicted !== state.predicted) return false;
    if (state.target && !Object.values(row.cells).some((cells) => cells.some((c) => c.target === state.target))) return false;
    if (state.misclassified && !(row.label && row.label !== row.predicted)) return false;
    if (state.search && !row.name.toLowerCase().includes(state.search.toLowerCase())) return false;
    return true;
  }
  function sorted(rows) {
    const by = {
      "name": (a, b) => a.name.localeCompare(b.name),
      "prob-desc": (a, b) => (b.prob ?? -1) - (a.prob ?? -1),
      "prob-asc": (a, b) => (a.prob ?? 2) - (b.prob ?? 2),
    }[state.sort];
    return rows.slice().sort(by);
  }

  function openViewer(src, caption) {
    $("viewer-image").src = encodePath(src);
    $("viewer-caption").textContent = caption;
    $("viewer").hidden = false;
  }

  function cellNode(method, cell) {
    const caption = (cell.target ?? "") + (cell.prob !== undefined && cell.prob !== null ? " (" + percent(cell.prob) + ")" : "");
    let picture;
    if (cell.thumb) {
      picture = el("img", { src: encodePath(cell.thumb), alt: method + ": " + caption, loading: "lazy", title: "open full size" });
      picture.addEventListener("click", () => openViewer(cell.full, method + ": " + caption));
    } else {
      picture = el("div", { className: "missing", textContent: "missing" });
    }
    const node = el("div", { className: "cell" }, [picture, el("div", { className: "caption", textContent: caption, title: caption })]);
    if (state.target && cell.target !== state.target) node.style.opacity = "0.35";
    return node;
  }

  function rowNode(row) {
    const info = [el("div", { textContent: row.name, title: row.image })];
    const verdict = row.label ? (row.label === row.predicted ? "right" : "wrong") : "";
    info.push(el("div", { className: verdict, textContent: "predicted " + (row.predicted ?? "?") + " " + percent(row.prob) }));
    if (row.label) info.push(el("div", { textContent: "true class " + row.label }));
    const picture = row.thumb ? el("img", { src: encodePath(row.thumb), alt: row.name, loading: "lazy" })
                              : el("div", { className: "missing", textContent: "no image" });
    const cells = [el("td", { className: "image" }, [picture]), el("td", { className: "info" }, info)];
    for (const method of data.methods) {
      if (!state.methods.has(method)) continue;
      cells.push(el("td", {}, (row.cells[method] || []).map((c) => cellNode(method, c))));
    }
    return el("tr", {}, cells);
  }

  function render() {
    const rows = sorted(data.rows.filter(matches));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const head = [el("th", { textContent: "image" }), el("th", { textContent: "file and prediction" })];
    for (const m of data.methods) if (state.methods.has(m)) head.push(el("th", { textContent: m }));
    $("head").replaceChildren(...head);
    const shown = rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
    $("body").replaceChildren(...shown.map(rowNode));
    $("count").textContent = rows.length + " of " + data.rows.length + " image(s)";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function controls() {
    fillSelect($("filter-predicted"), [...new Set(data.rows.map((r) => r.predicted).filter((p) => p !== null && p !== undefined))].sort());
    const targets = new Set();
    for (const r of data.rows) for (const cells of Object.values(r.cells)) for (const c of cells) if (c.target !== null && c.target !== undefined) targets.add(c.target);
    fillSelect($("filter-target"), [...targets].sort());
    for (const m of data.methods) {
      const box = el("input", { type: "checkbox", checked: true, value: m });
      box.addEventListener("change", () => { box.checked ? state.methods.add(m) : state.methods.delete(m); render(); });
      $("method-toggles").append(el("label", {}, [box, " " + m]));
    }
    $("misclassified-label").hidden = !data.has_labels;
    const on = (id, event, apply) => $(id).addEventListener(event, (e) => { apply(e.target); state.page = 0; render(); });
    on("filter-predicted", "change", (t) => { state.predicted = t.value; });
    on("filter-target", "change", (t) => { state.target = t.value; });
    on("filter-misclassified", "change", (t) => { state.misclassified = t.checked; });
    on("sort", "change", (t) => { state.sort = t.value; });
    on("search", "input", (t) => { state.search = t.value; });
    $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
    $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
    $("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("viewer").hidden = true; });
  }

  problems();
  evaluation();
  if (data.rows.length) { controls(); render(); } else { $("controls").hidden = true; $("rows").hidden = true; document.querySelector(".pager").hidden = true; }
})();
