// clip-rt report: the gallery per class and the results table, built from the JSON blob in the page.
// Every value from the data goes into the page as text (textContent, attributes), never as markup.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const N = D.path.length;
  const labels = D.labels;
  const hasTruth = Array.isArray(D.truth);
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }
  function pct(v) {
    if (v === null || v === undefined) return "–";
    return v === 0 || v >= 0.01 ? (100 * v).toFixed(1) + "%" : (100 * v).toPrecision(2) + "%";
  }
  function fmt(n) { return n.toLocaleString("en"); }
  function baseName(p) { const i = p.lastIndexOf("/"); return i >= 0 ? p.slice(i + 1) : p; }
  const names = D.path.map(baseName);
  function labelOf(i) { return D.label[i] >= 0 ? labels[D.label[i]] : ""; }
  function truthOf(i) { return hasTruth && D.truth[i] >= 0 ? labels[D.truth[i]] : ""; }
  function isWrong(i) { return hasTruth && D.truth[i] >= 0 && D.error[i] === null && D.truth[i] !== D.label[i]; }

  function placeholder(text, reason) {
    return el("div", { className: "placeholder", role: "img", "aria-label": text + (reason ? ": " + reason : ""),
                       title: reason || text, text: text });
  }
  // The thumbnail of image i, or a placeholder saying why there is none.
  function thumb(i, small) {
    if (D.error[i] !== null) return placeholder("could not be read", D.error[i]);
    if (!D.thumb[i]) return placeholder("no preview", D.thumbError[i]);
    const img = el("img", { alt: names[i], loading: "lazy", decoding: "async" });
    const w = D.width[i], h = D.height[i], s = small ? 48 : D.thumbSize;
    if (w && h) {
      const k = Math.min(1, s / Math.max(w, h));
      img.width = Math.max(1, Math.round(w * k));
      img.height = Math.max(1, Math.round(h * k));
    }
    img.addEventListener("error", () => img.replaceWith(placeholder("no preview", "the thumbnail file is missing")));
    img.src = D.thumbDir + "/" + encodeURIComponent(D.thumb[i]);
    if (!D.href[i]) return img;
    return el("a", { href: D.href[i], target: "_blank", rel: "noopener noreferrer", title: "open " + D.path[i] },
              [img]);
  }

  function pager(box, page, pages, go) {
    box.replaceChildren();
    if (pages <= 1) return;
    const prev = el("button", { type: "button", className: "prev", text: "◀ Previous" });
    const next = el("button", { type: "button", className: "next", text: "Next ▶" });
    prev.disabled = page <= 0;
    next.disabled = page >= pages - 1;
    prev.addEventListener("click", () => go(page - 1));
    next.addEventListener("click", () => go(page + 1));
    box.append(prev, el("span", { className: "where", text: "page " + fmt(page + 1) + " of " + fmt(pages) }), next);
  }

  // -- the gallery: one group per class (and one for the images that could not be read) ----------
  const score = (i) => (D.score[i] === null ? -1 : D.score[i]); // a result given without a score sorts last
  const orders = {
    desc: (a, b) => (score(b) - score(a)) || a - b,
    asc: (a, b) => (score(a) - score(b)) || a - b,
    name: (a, b) => collator.compare(names[a], names[b]) || collator.compare(D.path[a], D.path[b]) || a - b,
    input: (a, b) => a - b,
  };
  const orderSelect = document.getElementById("gallery-order");
  const groupsBox = document.getElementById("gallery-groups");
  const byLabel = labels.map(() => []);
  const failed = [];
  for (let i = 0; i < N; i++) {
    if (D.error[i] !== null) failed.push(i);
    else if (D.label[i] >= 0) byLabel[D.label[i]].push(i);
  }
  const groups = [];
  labels.forEach((name, k) => {
    if (byLabel[k].length) groups.push({ name: name, rows: byLabel[k], failed: false });
  });
  if (failed.length) groups.push({ name: "could not be read", rows: failed, failed: true });
  const empty = labels.filter((_, k) => !byLabel[k].length && !(hasTruth && D.truth.includes(k)));
  const openAtFirst = groups.length <= 12 ? groups.length : 3;

  function renderGroup(g) {
    const sorted = g.failed ? g.rows : g.rows.slice().sort(orders[orderSelect.value] || orders.desc);
    const pages = Math.ceil(sorted.length / D.galleryPage);
    g.page = Math.min(g.page, pages - 1);
    const tiles = sorted.slice(g.page * D.galleryPage, (g.page + 1) * D.galleryPage).map(tile);
    g.tiles.replaceChildren(...tiles);
    pager(g.pager, g.page, pages, (p) => { g.page = p; renderGroup(g); g.node.scrollIntoView(); });
    g.rendered = true;
  }
  function tile(i) {
    const caption = el("figcaption", {}, [
      el("span", { className: "label", text: D.error[i] !== null ? "not classified" : labelOf(i) }),
      D.error[i] === null ? el("span", { className: "score", text: pct(D.score[i]) }) : null,
      el("span", { className: "file", title: D.path[i], text: names[i] }),
      isWrong(i) ? el("span", { className: "err", text: "true class: " + truthOf(i) }) : null,
      D.error[i] !== null ? el("span", { className: "err", text: D.error[i] }) : null,
    ]);
    return el("figure", { className: "tile" + (isWrong(i) ? " wrong" : ""), "data-row": i },
              [el("div", { className: "frame" }, [thumb(i, false)]), caption]);
  }
  groups.forEach((g, k) => {
    const scored = g.rows.filter((i) => D.score[i] !== null);
    const mean = g.failed || !scored.length ? ""
      : " · mean score " + pct(scored.reduce((s, i) => s + D.score[i], 0) / scored.length);
    g.page = 0;
    g.tiles = el("div", { className: "tiles" });
    g.pager = el("div", { className: "pager" });
    g.node = el("details", { className: "group", "data-group": g.failed ? "failed" : g.name }, [
      el("summary", {}, [el("span", { className: "name", text: g.name }),
                         el("span", { className: "meta", text: fmt(g.rows.length) + (g.rows.length === 1 ? " image" : " images") + mean })]),
      g.tiles, g.pager]);
    g.node.addEventListener("toggle", () => { if (g.node.open && !g.rendered) renderGroup(g); });
    g.node.open = k < openAtFirst;
    if (g.node.open) renderGroup(g);
    groupsBox.append(g.node);
  });
  if (empty.length) groupsBox.append(el("p", { className: "note", text: "Classes without images: " + empty.join(", ") }));
  if (!groups.length) groupsBox.append(el("p", { className: "note", text: "No images." }));
  orderSelect.addEventListener("change", () => groups.forEach((g) => {
    g.page = 0; g.rendered = false; if (g.node.open) renderGroup(g);
  }));
  document.getElementById("gallery-open").addEventListener("click", () => groups.forEach((g) => { g.node.open = true; }));
  document.getElementById("gallery-close").addEventListener("click", () => groups.forEach((g) => { g.node.open = false; }));

  // -- the results table: filter, sort, pages ----------------------------------------------------------
  const nullsLast = (va, vb, dir) => (va === null ? (vb === null ? 0 : 1) : vb === null ? -1 : dir * (va < vb ? -1 : va > vb ? 1 : 0));
  const columns = [
    { key: "index", title: "#", num: true, value: (i) => i, cell: (i) => String(i + 1) },
    { key: "thumb", title: "Image", cell: (i) => thumb(i, true), className: "thumb" },
    { key: "file", title: "File", text: true, value: (i) => D.path[i], cell: (i) => D.path[i], className: "file" },
    { key: "label", title: "Class", text: true, value: (i) => (D.error[i] === null ? labelOf(i) : null), cell: labelOf },
    { key: "score", title: "Score", num: true, value: (i) => D.score[i], cell: (i) => pct(D.score[i]) },
  ];
  if (hasTruth) columns.push({ key: "truth", title: "True class", text: true, value: (i) => truthOf(i) || null, cell: truthOf });
  columns.push(
    { key: "width", title: "Width", num: true, value: (i) => D.width[i], cell: (i) => (D.width[i] === null ? "" : String(D.width[i])) },
    { key: "height", title: "Height", num: true, value: (i) => D.height[i], cell: (i) => (D.height[i] === null ? "" : String(D.height[i])) },
    { key: "error", title: "Error", text: true, value: (i) => D.error[i], cell: (i) => D.error[i] || "", className: "err" },
  );
  const state = { sort: "index", dir: 1, filter: "", cls: "", status: "", page: 0, size: 50 };
  const head = document.getElementById("table-head");
  const body = document.getElementById("table-body");
  const count = document.getElementById("table-count");
  const tablePager = document.getElementById("table-pager");
  const headers = columns.map((c) => {
    const th = el("th", { scope: "col", className: c.num ? "num" : null, "data-key": c.key });
    if (c.value) {
      const b = el("button", { type: "button", text: c.title, title: "sort by " + c.title.toLowerCase() });
      b.addEventListener("click", () => {
        state.dir = state.sort === c.key ? -state.dir : (c.key === "score" ? -1 : 1);
        state.sort = c.key;
        state.page = 0;
        update();
      });
      th.append(b);
    } else th.textContent = c.title;
    head.append(th);
    return th;
  });
  const classSelect = document.getElementById("table-class");
  labels.forEach((name, k) => {
    const n = byLabel[k].length;
    classSelect.append(el("option", { value: String(k), text: name + " (" + fmt(n) + ")" }));
  });
  const statusSelect = document.getElementById("table-status");
  if (hasTruth) {
    statusSelect.append(el("option", { value: "right", text: "right (class = true class)" }),
                        el("option", { value: "wrong", text: "wrong (class ≠ true class)" }));
  }
  let haystack = null; // lower-case text per row, made on the first filtering
  function matches(i) {
    if (state.cls !== "" && D.label[i] !== Number(state.cls) && !(hasTruth && D.truth[i] === Number(state.cls))) return false;
    if (state.status === "ok" && D.error[i] !== null) return false;
    if (state.status === "failed" && D.error[i] === null) return false;
    if (state.status === "wrong" && !isWrong(i)) return false;
    if (state.status === "right" && (isWrong(i) || D.error[i] !== null || !hasTruth || D.truth[i] < 0)) return false;
    if (state.filter) {
      if (!haystack) {
        haystack = D.path.map((p, k) => (p + "\n" + labelOf(k) + "\n" + truthOf(k) + "\n" + (D.error[k] || "")).toLowerCase());
      }
      if (!haystack[i].includes(state.filter)) return false;
    }
    return true;
  }
  function update() {
    const col = columns.find((c) => c.key === state.sort);
    const rows = [];
    for (let i = 0; i < N; i++) if (matches(i)) rows.push(i);
    rows.sort((a, b) => {
      const va = col.value(a), vb = col.value(b);
      let r;
      if (col.text && va !== null && vb !== null) r = state.dir * collator.compare(va, vb);
      else r = nullsLast(va, vb, state.dir);
      return r || a - b;
    });
    const pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * state.size;
    const shown = rows.slice(first, first + state.size);
    body.replaceChildren(...shown.map((i) => el("tr", { "data-row": i, className: isWrong(i) ? "wrong" : null },
      columns.map((c) => {
        const content = c.cell(i);
        const td = el("td", { className: [c.num ? "num" : "", c.className || ""].join(" ").trim() || null });
        if (typeof content === "string") td.textContent = content; else td.append(content);
        return td;
      }))));
    headers.forEach((th, k) => {
      if (columns[k].key === state.sort) th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    count.textContent = rows.length
      ? "Showing " + fmt(first + 1) + "–" + fmt(first + shown.length) + " of " + fmt(rows.length) + " matching images" +
        (rows.length !== N ? " (" + fmt(N) + " in all)" : "")
      : "No images match (" + fmt(N) + " in all).";
    pager(tablePager, state.page, pages, (p) => { state.page = p; update(); });
  }
  let typing = 0;
  document.getElementById("table-filter").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.filter = e.target.value.trim().toLowerCase(); state.page = 0; update(); }, 150);
  });
  classSelect.addEventListener("change", () => { state.cls = classSelect.value; state.page = 0; update(); });
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; state.page = 0; update(); });
  document.getElementById("table-size").addEventListener("change", (e) => {
    state.size = Number(e.target.value); state.page = 0; update();
  });
  update();
  document.body.setAttribute("data-ready", "1");
})();
