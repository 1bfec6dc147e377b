// clip-rt search page: POST /search with fetch(), results as a grid of thumbnails fetched with the same
// headers and shown from blob: URLs. Values from the service go into the page as text, never as markup.
(function () {
  "use strict";
  const C = JSON.parse(document.getElementById("page-data").textContent);
  const KEY_STORE = "clip-rt-api-key";
  const PARALLEL = 6; // thumbnails fetched at once
  const $ = (id) => document.getElementById(id);
  const service = $("service"), status = $("status"), errorBox = $("error"), results = $("results");
  const keyForm = $("key-form"), keyInput = $("key"), form = $("search-form"), query = $("query");
  const indexSelect = $("index"), topK = $("top-k"), button = $("search-button"), example = $("example");
  const preview = $("example-preview"), drop = $("drop");
  let ready = false;
  let current = null; // {abort: AbortController, urls: [blob URLs]} of the results shown
  let previewUrl = null;

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
  function key() { try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; } }
  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const k = key();
    if (k) h["Authorization"] = "Bearer " + k;
    return h;
  }
  function showError(text) { errorBox.textContent = text; errorBox.hidden = !text; }
  function askForKey(why) {
    keyForm.hidden = false;
    if (why) showError(why);
    keyInput.focus();
  }
  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return "HTTP " + resp.status + " " + resp.statusText;
  }

  // -- the service: models and indexes, ready or loading --------------------------------------------
  function describe(indexes) {
    service.replaceChildren();
    const parts = [];
    const models = C.models.length ? C.models : ["none"];
    parts.push([models.length > 1 ? "models " : "model ", models.join(", ")]);
    if (indexes.length) {
      parts.push([indexes.length > 1 ? "indexes " : "index ",
                  indexes.map((ix) => ix.name + (ix.images !== undefined ? " (" + ix.images.toLocaleString("en") +
                                                  " images, " + ix.model + ")" : "")).join(", ")]);
    }
    parts.forEach(([k, v], i) => {
      if (i) service.append(" · ");
      service.append(k, el("b", { text: v }));
    });
  }
  indexSelect.replaceChildren(...C.indexes.map((ix) => el("option", { value: ix.name, text: ix.name })));
  for (const option of Array.from(topK.options)) if (Number(option.value) > C.maxTopK) option.remove();
  if (!topK.options.length) topK.append(el("option", { value: String(C.maxTopK), text: String(C.maxTopK) }));
  if (C.indexes.length < 2) { indexSelect.hidden = true; $("index-label").hidden = true; }
  describe(C.indexes);
  if (!C.indexes.length) {
    showError("This service has no search index: start it with --index DIR (a folder made by `clip-rt index`).");
    button.disabled = true;
  }
  async function poll() {
    let resp;
    try { resp = await fetch("/readyz", { cache: "no-store" }); } catch (e) {
      status.textContent = "The service does not answer; retrying…";
      setTimeout(poll, 2000);
      return;
    }
    const body = await resp.json().catch(() => ({}));
    if (resp.ok) {
      ready = true;
      describe(body.indexes || C.indexes);
      status.textContent = "";
      if (C.indexes.length) button.disabled = false;
      document.body.setAttribute("data-ready", "1");
    } else if (body.status === "failed") {
      showError("The models failed to load: " + (body.error || "see the service's log"));
    } else {
      status.textContent = "The models are loading…";
      button.disabled = true;
      setTimeout(poll, 1000);
    }
  }
  if (C.auth && !key()) askForKey("");

  keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const k = keyInput.value.trim();
    if (!k) return;
    try { sessionStorage.setItem(KEY_STORE, k); } catch (err) { showError("This browser does not keep the key."); }
    keyInput.value = "";
    keyForm.hidden = true;
    showError("");
  });

  // -- searching ------------------------------------------------------------------------------------
  async function search(q, label) {
    if (!ready) return;
    showError("");
    if (current) { current.abort.abort(); current.urls.forEach((u) => URL.revokeObjectURL(u)); }
    const mine = { abort: new AbortController(), urls: [] };
    current = mine;
    status.textContent = "Searching " + label + "…";
    button.disabled = true;
    let resp;
    try {
      resp = await fetch("/search", {
        method: "POST", headers: headers(true), signal: mine.abort.signal,
        body: JSON.stringify({ index: indexSelect.value, query: q, top_k: Number(topK.value) }),
      });
    } catch (e) {
      if (mine === current) { status.textContent = ""; showError("The search failed: " + e.message); }
      return;
    } finally {
      if (mine === current) button.disabled = false;
    }
    if (mine !== current) return;
    if (resp.status === 401) {
      try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* nothing kept */ }
      status.textContent = "";
      askForKey(await errorText(resp));
      return;
    }
    if (!resp.ok) { status.textContent = ""; showError(await errorText(resp)); return; }
    const body = await resp.json();
    show(body, label, mine);
  }

  function show(body, label, mine) {
    const hits = body.results || [];
    status.textContent = hits.length + (hits.length === 1 ? " result" : " results") + " for " + label +
      " in index " + body.index + " (model " + body.model + ")";
    const tiles = hits.map((hit) => {
      const name = hit.path.split(/[\\/]/).pop();
      const frame = el("div", { className: "frame" }, [el("div", { className: "placeholder", text: "loading…" })]);
      const fig = el("figure", { className: "hit", "data-row": hit.row }, [frame, el("figcaption", {}, [
        el("span", { className: "rank", text: "#" + hit.rank }),
        el("span", { className: "score", title: "cosine similarity", text: hit.score.toFixed(3) }),
        el("span", { className: "file", title: hit.path, text: name }),
      ])]);
      return { hit: hit, frame: frame, name: name, fig: fig };
    });
    results.replaceChildren(...tiles.map((t) => t.fig));
    const queue = tiles.slice();
    const worker = async () => {
      while (queue.length && mine === current) await loadThumb(queue.shift(), body, mine);
    };
    for (let i = 0; i < PARALLEL; i++) worker();
  }

  async function loadThumb(t, body, mine) {
    const url = "/thumbnails/" + encodeURIComponent(body.index) + "/" + t.hit.row + "?generation=" + body.generation;
    let resp;
    try {
      resp = await fetch(url, { headers: headers(false), signal: mine.abort.signal });
    } catch (e) {
      if (mine === current) t.frame.replaceChildren(el("div", { className: "placeholder", text: "no preview", title: e.message }));
      return;
    }
    if (!resp.ok) {
      const why = await errorText(resp);
      t.frame.replaceChildren(el("div", { className: "placeholder", role: "img", "aria-label": "no preview: " + why,
                                          title: why, text: "no preview" }));
      return;
    }
    const blob = await resp.blob();
    if (mine !== current) return;
    const src = URL.createObjectURL(blob);
    mine.urls.push(src);
    const img = el("img", { alt: t.name, title: t.hit.path });
    img.src = src;
    t.frame.replaceChildren(img);
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = query.value.trim();
    if (!text) { showError("Type what to look for, or choose an example image."); return; }
    search(text, "“" + text + "”");
  });

  function searchByImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) { showError(file.name + " is not an image (" + (file.type || "unknown type") + ")."); return; }
    // base64 makes the body a third larger than the file
    if (file.size * 4 / 3 + 1024 > C.maxBodyBytes) {
      showError(file.name + " has " + (file.size / 1e6).toFixed(1) + " MB; this service takes requests of up to " +
                (C.maxBodyBytes / 1e6).toFixed(1) + " MB (about " + (C.maxBodyBytes * 0.75 / 1e6).toFixed(1) +
                " MB of image). Choose a smaller image.");
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = file.name;
    preview.hidden = false;
    const reader = new FileReader();
    reader.addEventListener("load", () => search({ image: reader.result }, "the image " + file.name));
    reader.addEventListener("error", () => showError("Could not read " + file.name + ": " + reader.error));
    reader.readAsDataURL(file);
  }
  example.addEventListener("change", () => { searchByImage(example.files[0]); example.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchByImage(e.dataTransfer.files[0]);
  });
  button.disabled = true;
  poll();
})();
