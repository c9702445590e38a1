// The Jaga dashboard: a single page over the /v1 API, no framework and no build step.
// Every string from the API reaches the page as a text node or an attribute value set through the DOM, never as
// HTML; the page's Content-Security-Policy allows only this script.
"use strict";

(() => {
  const KEY_NAME = "jaga.dashboard.key";
  const POLL_MS = 3000;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const JOB_STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
  const JOB_KINDS = ["ingest", "pretrain", "distill", "evaluate", "index"];
  // The curves of a job page: the metric event key, the chart's title.
  const CURVES = [
    ["loss", "Loss"],
    ["lr", "Learning rate"],
    ["images_per_second", "Images/s"],
    ["online_knn_accuracy", "Online kNN accuracy"],
    ["embedding_std", "Embedding std"],
    ["effective_rank", "Effective rank"],
  ];
  const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c", "#5c940d",
    "#364fc7", "#868e96"];

  const app = document.getElementById("app");
  const login = document.getElementById("login");
  let view = { token: 0, timers: [], urls: [] };
  const listFilters = { status: "", kind: "" };

  // ---- DOM helpers -------------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name === "className" ? "class" : name, value === true ? "" : String(value));
    }
  }

  function link(route, ...parts) {
    return el("a", { href: "#/" + route.map(encodeURIComponent).join("/") }, ...parts);
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      const abs = Math.abs(value);
      if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
      return String(Number(value.toPrecision(4)));
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function status(s) {
    return el("span", { class: "status " + String(s).replace(/[^a-z]/g, "") }, s);
  }

  function kv(pairs) {
    return el("dl", { class: pairs.length > 6 ? "kv wide" : "kv" }, pairs.map(([k, v]) => [el("dt", null, k), el("dd", null, v instanceof Node ? v : fmt(v))]));
  }

  function table(headers, rows, attrs) {
    return el("table", attrs, el("thead", null, el("tr", null, headers.map((h) => el("th", null, h)))),
      el("tbody", null, rows.map((cells) => el("tr", null, cells.map((c) => el("td", null, c instanceof Node ? c : fmt(c)))))));
  }

  function progressBar(fraction) {
    const bar = el("div", { class: "bar", title: Math.round(100 * fraction) + " %" }, el("div"));
    bar.firstChild.style.width = Math.round(100 * Math.max(0, Math.min(1, fraction))) + "%";
    return bar;
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  // ---- API ---------------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, { method = "GET", body, etag, raw = false } = {}) {
    const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY_NAME) };
    if (etag) headers["If-None-Match"] = etag;
    const response = await fetch(path, { method, body, headers, cache: "no-store" });
    if (response.status === 401) {
      forgetKey("That key was refused; enter a valid one.");
      throw new ApiError(401, "unauthorized");
    }
    if (response.status === 304) return { status: 304, etag: response.headers.get("ETag"), body: null };
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    const data = raw ? await response.blob() : await response.json();
    return { status: response.status, etag: response.headers.get("ETag"), body: data };
  }

  async function allPages(path, limit = 200) {
    const rows = [];
    let after = null;
    do {
      const sep = path.includes("?") ? "&" : "?";
      const page = (await api(path + sep + "limit=" + limit + (after ? "&after=" + encodeURIComponent(after) : ""))).body;
      rows.push(...page.data);
      after = page.has_more ? page.next_after : null;
    } while (after && rows.length < 2000);
    return rows;
  }

  // ---- views and routing -------------------------------------------------------------------------------------

  function every(ms, fn) {
    const token = view.token;
    const tick = async () => {
      if (token !== view.token) return;
      try { await fn(); } catch (err) { if (!(err instanceof ApiError && err.status === 401)) console.warn(err); }
      if (token === view.token) view.timers.push(setTimeout(tick, ms));
    };
    view.timers.push(setTimeout(tick, ms));
  }

  function current(token) { return token === view.token; }

  function newView() {
    view.timers.forEach(clearTimeout);
    view.urls.forEach((u) => URL.revokeObjectURL(u));
    view = { token: view.token + 1, timers: [], urls: [] };
    return view.token;
  }

  function failure(err) {
    return el("p", { class: "error" }, err instanceof ApiError ? `${err.status}: ${err.message}` : String(err));
  }

  async function route() {
    const token = newView();
    if (!sessionStorage.getItem(KEY_NAME)) { showLogin(); return; }
    login.hidden = true; app.hidden = false; document.getElementById("logout").hidden = false;
    const parts = (location.hash.replace(/^#\/?/, "") || "jobs").split("/").map(decodeURIComponent);
    const [section, id] = parts;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + section);
    document.body.dataset.view = section + (id ? "-detail" : "");
    replace(app, el("p", { class: "muted" }, "Loading…"));
    const pages = { jobs: [jobsPage, jobPage], datasets: [datasetsPage, datasetPage], models: [modelsPage, modelPage], ops: [opsPage, opsPage] };
    const [list, detail] = pages[section] || pages.jobs;
    try {
      await (id ? detail(token, id) : list(token));
    } catch (err) {
      if (current(token) && !(err instanceof ApiError && err.status === 401)) replace(app, failure(err));
    }
  }

  // ---- jobs --------------------------------------------------------------------------------------------------

  async function jobsPage(token) {
    const select = (name, values) => el("select", { id: "filter-" + name, "aria-label": name, onchange: (e) => { listFilters[name] = e.target.value; route(); } },
      el("option", { value: "" }, "any " + name), values.map((v) => el("option", { value: v, selected: listFilters[name] === v }, v)));
    const body = el("div", { id: "jobs-table" });
    replace(app, el("h1", null, "Jobs"), el("div", { class: "filters" }, select("status", JOB_STATUSES), select("kind", JOB_KINDS),
      el("span", { class: "muted", id: "jobs-polled" })), body);
    let etag = null;
    const params = new URLSearchParams({ limit: "100" });
    for (const [k, v] of Object.entries(listFilters)) if (v) params.set(k, v);
    const refresh = async () => {
      const r = await api("/v1/jobs?" + params, { etag });
      if (!current(token)) return;
      document.getElementById("jobs-polled").textContent = "refreshed " + new Date().toLocaleTimeString() + (r.status === 304 ? " (unchanged)" : "");
      document.body.dataset.lastPoll = String(r.status);
      if (r.status === 304) return;
      etag = r.etag;
      const jobs = r.body.data;
      replace(body, jobs.length === 0 ? el("p", { class: "muted" }, "No jobs.") : table(
        ["Job", "Kind", "Status", "Phase", "Progress", "Loss", "Created"],
        jobs.map((j) => [link(["jobs", j.id], j.id), j.kind, status(j.status), j.phase, progressBar(j.progress), j.loss, when(j.created_at)]),
        { id: "jobs" }));
    };
    await refresh();
    every(POLL_MS, refresh);
  }

  function metricSeries(events) {
    const series = Object.fromEntries(CURVES.map(([key]) => [key, []]));
    let n = 0;
    for (const e of events) {
      if (e.type !== "metrics") continue;
      n += 1;
      for (const [key] of CURVES) {
        const v = e.data[key];
        if (typeof v === "number" && Number.isFinite(v)) series[key].push({ x: typeof e.data.epoch === "number" ? e.data.epoch : n, y: v });
      }
    }
    return series;
  }

  function lineChart(key, title, points) {
    const W = 400, H = 190, L = 62, R = 12, T = 10, B = 26;
    const box = el("div", { class: "chart card", "data-metric": key, "data-points": points.length }, el("h3", null, title));
    if (points.length === 0) { box.append(el("p", { class: "muted" }, "no data yet")); return box; }
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const ticks = [0, 0.5, 1].map((f) => y0 + f * (y1 - y0));
    const d = points.map((p, i) => (i ? "L" : "M") + sx(p.x).toFixed(1) + " " + sy(p.y).toFixed(1)).join(" ");
    box.append(svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title },
      ticks.map((t) => [svg("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }),
        svg("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t))]),
      svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }),
      svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
      svg("text", { x: L, y: H - 8 }, "epoch " + fmt(x0)),
      svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, "epoch " + fmt(x1)),
      svg("path", { class: "series", d }),
      points.map((p) => svg("circle", { class: "point", cx: sx(p.x), cy: sy(p.y), r: 3 }, svg("title", null, `epoch ${fmt(p.x)}: ${fmt(p.y)}`)))));
    return box;
  }

  async function jobPage(token, id) {
    let etag = null, job = null, after = 0;
    const events = [];
    const summary = el("div", { id: "job-summary", class: "card" });
    const charts = el("div", { id: "charts", class: "grid" });
    const history = el("div", { id: "history" });
    const messages = el("div", { id: "messages" });
    const result = el("div", { id: "result" });
    replace(app, el("h1", null, "Job ", el("span", { id: "job-id" }, id)), summary, el("h2", null, "Curves"), charts,
      el("h2", null, "State history"), history, messages, result);

    const fetchEvents = async () => {
      for (;;) {
        const page = (await api(`/v1/jobs/${encodeURIComponent(id)}/events?limit=200&after=${after}`)).body;
        events.push(...page.data);
        if (page.next_after !== null) after = page.next_after;
        if (!page.has_more) break;
      }
    };
    const render = () => {
      replace(summary, kv([
        ["Kind", job.kind], ["Status", status(job.status)], ["Phase", job.phase], ["Progress", progressBar(job.progress)],
        ["Epoch / step", `${job.epoch} / ${job.step}${job.total_steps ? " of " + job.total_steps : ""}`], ["Loss", job.loss],
        ["ETA", job.eta_seconds === null ? "–" : Math.round(job.eta_seconds) + " s"], ["Attempt", `${job.attempt} of ${job.max_attempts}`],
        ["Dataset", job.spec.dataset_id ? link(["datasets", job.spec.dataset_id], job.spec.dataset_id) : "–"],
        ["Method", job.spec.method || job.spec.protocol || "–"],
        ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
        ["Error", job.error ? `${job.error.code}: ${job.error.message}` : "–"],
      ]));
      const series = metricSeries(events);
      replace(charts, CURVES.map(([key, title]) => lineChart(key, title, series[key])));
      const states = events.filter((e) => e.type === "state");
      replace(history, table(["Time", "Status", "Details"], states.map((e) => {
        const { status: s, ...rest } = e.data;
        return [when(e.created_at), status(s), Object.keys(rest).length ? Object.entries(rest).map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") : ""];
      }), { id: "states" }));
      const notes = events.filter((e) => e.type === "message" || e.type === "warning");
      replace(messages, notes.length ? [el("h2", null, "Messages"), table(["Time", "Type", "Message"],
        notes.map((e) => [when(e.created_at), e.type, e.data.message || fmt(e.data)]))] : []);
      const r = job.result;
      const made = r ? [r.model_id && ["Model", link(["models", r.model_id], r.model_id)], r.index_id && ["Index", r.index_id]].filter(Boolean) : [];
      replace(result, r ? [el("h2", null, "Result"), made.length ? kv(made) : null, el("pre", { class: "card" }, JSON.stringify(r, null, 2))] : []);
    };
    const refresh = async () => {
      const r = await api("/v1/jobs/" + encodeURIComponent(id), { etag });
      if (!current(token)) return;
      document.body.dataset.lastPoll = String(r.status);
      if (r.status === 304) return;
      etag = r.etag; job = r.body;
      await fetchEvents();
      if (current(token)) render();
    };
    await refresh();
    every(POLL_MS, refresh);
  }

  // ---- datasets ----------------------------------------------------------------------------------------------

  async function datasetsPage(token) {
    const datasets = await allPages("/v1/datasets");
    if (!current(token)) return;
    replace(app, el("h1", null, "Datasets"), datasets.length === 0 ? el("p", { class: "muted" }, "No datasets.") : table(
      ["Dataset", "Name", "Status", "Images", "Classes", "Rejected", "Created"],
      datasets.map((d) => [link(["datasets", d.id], d.id), d.name, status(d.status), d.num_images, d.classes.length, d.num_rejected, when(d.created_at)]),
      { id: "datasets" }));
  }

  function thumbnail(datasetId, item, caption, extra) {
    const img = el("img", { alt: caption || "item " + item, "data-item": item });
    const box = el("figure", { class: "thumb" }, img, el("span", { title: caption || "" }, caption || "#" + item), extra || null);
    box.style.margin = "0";
    const token = view.token;
    api(`/v1/datasets/${encodeURIComponent(datasetId)}/items/${item}/image`, { raw: true }).then((r) => {
      if (!current(token)) return;
      const url = URL.createObjectURL(r.body);
      view.urls.push(url);
      img.src = url;
    }).catch((err) => { img.alt = "unavailable: " + err.message; });
    return box;
  }

  async function datasetPage(token, id) {
    const d = (await api("/v1/datasets/" + encodeURIComponent(id))).body;
    if (!current(token)) return;
    const total = d.classes.reduce((s, c) => s + c.count, 0) || 1;
    const samples = Math.min(12, d.status === "ready" ? d.num_images : 0);
    replace(app, el("h1", null, "Dataset ", el("span", { id: "dataset-name" }, d.name)),
      el("div", { class: "card" }, kv([["Id", d.id], ["Status", status(d.status)], ["Images", d.num_images], ["Labelled", d.num_labelled],
        ["Stored shape", d.image_shape ? d.image_shape.join(" × ") : "–"], ["Source", `${d.source_filename} (${d.source_format}, ${d.source_bytes} bytes)`],
        ["Ingest job", d.ingest_job_id ? link(["jobs", d.ingest_job_id], d.ingest_job_id) : "–"], ["Created", when(d.created_at)],
        ["Error", d.error ? fmt(d.error.message || d.error) : "–"]])),
      el("h2", null, "Classes"),
      d.classes.length ? table(["Class", "Images", ""], d.classes.map((c) => [c.name, c.count, progressBar(c.count / total)]), { id: "classes" })
        : el("p", { class: "muted" }, "No labels."),
      el("h2", null, `Rejected files (${d.num_rejected})`),
      d.rejected.length ? table(["File", "Reason"], d.rejected.map((r) => [r.file, r.reason]), { id: "rejected" })
        : el("p", { class: "muted", id: "rejected" }, "None."),
      el("h2", null, "Sample images"),
      el("div", { class: "thumbs", id: "samples" }, Array.from({ length: samples }, (_, i) => thumbnail(d.id, Math.floor((i * d.num_images) / samples)))));
  }

  // ---- models ------------------------------------------------------------------------------------------------

  async function modelsPage(token) {
    const models = await allPages("/v1/models");
    if (!current(token)) return;
    replace(app, el("h1", null, "Models"), models.length === 0 ? el("p", { class: "muted" }, "No models.") : table(
      ["Model", "Type", "Method", "Backbone", "Dim", "Dataset", "kNN top-1", "Created"],
      models.map((m) => [link(["models", m.id], m.id), m.type, m.method, m.backbone, m.embedding_dim, link(["datasets", m.dataset_id], m.dataset_id),
        m.metrics.knn_accuracy, when(m.created_at)]),
      { id: "models" }));
  }

  function colourOf(labels) {
    const names = [...new Set(labels.map((l) => l ?? "(none)"))].sort();
    return [names, (l) => PALETTE[names.indexOf(l ?? "(none)") % PALETTE.length]];
  }

  function scatter(points) {
    const S = 480, M = 16;
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const sx = (x) => M + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (S - 2 * M);
    const sy = (y) => S - M - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (S - 2 * M);
    const [names, colour] = colourOf(points.map((p) => p.label));
    return [svg("svg", { viewBox: `0 0 ${S} ${S}`, role: "img", "aria-label": "embedding map", id: "map-svg" },
      points.map((p) => svg("circle", { class: "map-point", cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 4, fill: colour(p.label), "fill-opacity": 0.75 },
        svg("title", null, `#${p.item} ${p.label ?? ""}`)))),
    el("div", { class: "legend" }, names.map((n) => { const i = el("i"); i.style.background = colour(n === "(none)" ? null : n); return el("span", null, i, n); }))];
  }

  async function modelPage(token, id) {
    const m = (await api("/v1/models/" + encodeURIComponent(id))).body;
    if (!current(token)) return;
    const metrics = Object.entries(m.metrics || {});
    const evals = el("div", { id: "evaluations" }, el("p", { class: "muted" }, "Loading…"));
    const search = el("div", { id: "search" }, el("p", { class: "muted" }, "Loading…"));
    const map = el("div", { id: "map", class: "map" }, el("p", { class: "muted" }, "Embedding the dataset…"));
    replace(app, el("h1", null, "Model ", el("span", { id: "model-id" }, m.id)),
      el("div", { class: "card" }, kv([["Type", m.type], ["Method", m.method], ["Backbone", `${m.backbone} (${m.stem} stem)`], ["Image size", m.image_size],
        ["Embedding dim", m.embedding_dim], ["Dataset", link(["datasets", m.dataset_id], m.dataset_id)], ["Training job", link(["jobs", m.job_id], m.job_id)],
        ["Parent model", m.parent_model_id ? link(["models", m.parent_model_id], m.parent_model_id) : "–"],
        ["Classes", m.classes ? m.classes.join(", ") : "–"], ["Created", when(m.created_at)]])),
      el("h2", null, "Metrics"),
      metrics.length ? table(["Metric", "Value"], metrics.map(([k, v]) => [k, typeof v === "object" && v !== null ? el("pre", null, JSON.stringify(v, null, 1)) : v]), { id: "metrics" })
        : el("p", { class: "muted" }, "None recorded."),
      el("h2", null, "Evaluations"), evals,
      el("div", { class: "columns", id: "explore" },
        el("section", null, el("h2", null, "Search by image"), search),
        el("section", null, el("h2", null, "Embedding map (PCA)"), map)));

    allPages("/v1/jobs?kind=evaluate&model_id=" + encodeURIComponent(m.id)).then((mine) => {
      replace(evals, mine.length ? table(["Job", "Protocol", "Status", "Top-1", "Top-5", "Dataset"], mine.map((j) => [link(["jobs", j.id], j.id),
        j.spec.protocol + (j.spec.strategy ? ` (${j.spec.strategy})` : ""), status(j.status), j.result ? j.result.top1 : null, j.result ? j.result.top5 : null,
        j.spec.dataset_id]), { id: "evaluations-table" }) : el("p", { class: "muted" }, "No evaluations of this model yet."));
    }).catch((err) => replace(evals, failure(err)));

    api("/v1/indexes?limit=200&model_id=" + encodeURIComponent(m.id)).then((r) => {
      if (!current(token)) return;
      const indexes = r.body.data;
      if (!indexes.length) { replace(search, el("p", { class: "muted" }, "No index of this model: submit an index job to search with it.")); return; }
      const pick = el("select", { id: "search-index", "aria-label": "index" }, indexes.map((i) => el("option", { value: i.id }, `${i.id} (${i.num_items} items of ${i.dataset_id})`)));
      const file = el("input", { id: "search-file", type: "file", accept: "image/*", "aria-label": "query image" });
      const k = el("input", { id: "search-k", type: "number", min: 1, max: 100, value: 8, "aria-label": "k" });
      const results = el("div", { id: "search-results", class: "thumbs" });
      const error = el("p", { class: "error" });
      const run = async (event) => {
        event.preventDefault();
        replace(error);
        if (!file.files.length) { error.textContent = "Choose an image first."; return; }
        const form = new FormData();
        form.append("image", file.files[0]);
        form.append("k", k.value);
        const index = indexes.find((i) => i.id === pick.value);
        try {
          const found = (await api(`/v1/indexes/${encodeURIComponent(index.id)}/search`, { method: "POST", body: form })).body;
          if (!current(token)) return;
          const query = URL.createObjectURL(file.files[0]);
          view.urls.push(query);
          const q = el("figure", { class: "thumb" }, el("img", { src: query, alt: "query" }), el("span", null, "query"));
          q.style.margin = "0";
          replace(results, q, found.results.map((hit) => thumbnail(index.dataset_id, hit.item, hit.label ?? hit.filename,
            el("span", { class: "muted" }, "score " + fmt(hit.score)))));
        } catch (err) { error.textContent = err.message; }
      };
      replace(search, el("form", { class: "filters", id: "search-form", onsubmit: run }, pick, file, el("label", null, "k ", k),
        el("button", { type: "submit", id: "search-button" }, "Search")), error, results);
    }).catch((err) => replace(search, failure(err)));

    api(`/v1/models/${encodeURIComponent(m.id)}/map?limit=500`).then((r) => {
      if (!current(token)) return;
      const body = r.body;
      replace(map, el("p", { class: "muted" }, `${body.points.length} items of dataset ${body.dataset_id}; the axes explain `
        + body.explained_variance.map((v) => Math.round(100 * v) + " %").join(" and ") + " of the variance."), scatter(body.points));
    }).catch((err) => replace(map, failure(err)));
  }

  // ---- ops ---------------------------------------------------------------------------------------------------

  async function opsPage(token) {
    const body = el("div", { id: "ops" });
    replace(app, el("h1", null, "Queue and workers"), body);
    const refresh = async () => {
      const q = (await api("/v1/ops/queue")).body;
      if (!current(token)) return;
      replace(body, el("div", { class: "card" }, kv([["Queue", q.queue], ["Messages waiting", q.queue_depth === null ? "broker unreachable" : q.queue_depth]])),
        el("h2", null, "Jobs by status"),
        table(Object.keys(q.jobs), [Object.values(q.jobs)], { id: "job-counts" }),
        el("h2", null, `Workers (${q.workers.length})`),
        q.workers.length ? table(["Worker", "Host", "PID", "Started", "Last seen", "Lease"], q.workers.map((w) => [w.id, w.hostname, w.pid,
          when(w.started_at), when(w.last_seen_at), w.job_id ? link(["jobs", w.job_id], w.job_id, ` (${w.job_kind}, ${w.job_status})`) : (w.busy ? "another tenant's job" : "idle")]),
        { id: "workers" }) : el("p", { class: "muted", id: "workers" }, "No live worker."));
    };
    await refresh();
    every(POLL_MS, refresh);
  }

  // ---- the key -----------------------------------------------------------------------------------------------

  function showLogin(message) {
    app.hidden = true; login.hidden = false; document.getElementById("logout").hidden = true;
    document.getElementById("login-error").textContent = message || "";
    document.getElementById("key").focus();
  }

  function forgetKey(message) {
    sessionStorage.removeItem(KEY_NAME);
    newView();
    showLogin(message);
  }

  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key");
    sessionStorage.setItem(KEY_NAME, input.value.trim());
    input.value = "";
    route();
  });
  document.getElementById("logout").addEventListener("click", () => forgetKey());
  window.addEventListener("hashchange", route);
  route();
})();
