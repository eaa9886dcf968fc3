// The AIA dashboard: plain DOM, no framework, no build step.
// Every value from the API reaches the page through textContent or DOM properties,
// never as HTML, and the API key is only ever sent to this page's own origin.

const KEY = "aia.apiKey";
const REFRESH_MS = 3000;
const PAGE_SIZE = 20;
const STATUSES = ["queued", "running", "succeeded", "failed"];

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY),
  status: "",
  type: "",
  tokens: [null], // page_token of each page seen, so "Newer" can go back
  page: 0,
  next: null,
  open: null, // the task whose detail is shown
  timer: null,
  busy: false,
  again: false, // a refresh was asked for while one ran
  types: new Set(),
};

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, method = "GET") {
  const url = new URL(path, window.location.origin);
  if (url.origin !== window.location.origin) {
    throw new Error("refusing to send the key to another origin");
  }
  const headers = { Accept: "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const resp = await fetch(url, {
    method,
    headers,
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
    referrerPolicy: "no-referrer",
  });
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

// A DOM element with text children only: strings become text nodes, never markup.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? ""))));
  return node;
}

// The trace console's page of a trace, when the deployment names one (a <meta> the
// dashboard function fills in); only http(s) links are made.
function traceUrl(traceId) {
  const template = document.querySelector('meta[name="aia-trace-url"]')?.content || "";
  if (!traceId || !/^[0-9a-f]{32}$/.test(traceId) || !/^https?:\/\//.test(template) || !template.includes("{trace_id}")) return null;
  return template.replaceAll("{trace_id}", traceId);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toISOString().slice(0, 19).replace("T", " ");
}

function statusBadge(status) {
  return el("span", { className: `badge badge-${STATUSES.includes(status) ? status : "other"}` }, status);
}

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "error" : "ok";
}

function taskLink(taskId) {
  return el("button", { type: "button", className: "link", dataset: { open: taskId }, onclick: () => openTask(taskId) }, taskId.slice(0, 12) + "…");
}

// --- loading ----------------------------------------------------------------------

async function loadCounts() {
  const cells = document.querySelectorAll("#counts .count");
  try {
    const { counts } = await api("/tasks/counts");
    for (const cell of cells) cell.querySelector(".n").textContent = String(counts[cell.dataset.status] ?? 0);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      for (const cell of cells) cell.querySelector(".n").textContent = "n/a";
      return;
    }
    throw error;
  }
}

// The tenant's token budget and limits (GET /usage): balance, what running tasks hold,
// this month's spending, its rate and running limits; hidden when there is none of them.
async function loadUsage() {
  const line = $("usage");
  let usage;
  try {
    usage = await api("/usage");
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 403)) {
      line.hidden = true;
      return;
    }
    throw error;
  }
  const parts = [];
  if (usage && usage.budgeted) {
    const period = usage.period || {};
    parts.push(
      el("span", { dataset: { usage: "balance" } }, `${usage.balance}`), " tokens left · ",
      el("span", { dataset: { usage: "reserved" } }, `${usage.reserved}`), " held by running tasks · ",
      el("span", { dataset: { usage: "spent" } }, `${period.spent ?? 0}`), ` spent in ${period.id ?? "this month"}`,
    );
  }
  const limits = (usage && usage.limits) || {};
  for (const [scope, limit] of Object.entries(limits.rate || {})) {
    const what = scope === "*" ? "submits" : `${scope} submits`;
    if (parts.length) parts.push(" · ");
    parts.push(el("span", { dataset: { usage: `rate-${scope === "*" ? "all" : scope}` } }, `${limit.rate}/s`), ` ${what} (burst ${limit.burst})`);
  }
  if (limits.max_running) {
    if (parts.length) parts.push(" · ");
    parts.push("at most ", el("span", { dataset: { usage: "max-running" } }, `${limits.max_running}`), " running at once");
  }
  line.replaceChildren(...parts);
  line.hidden = parts.length === 0;
}

async function loadTasks() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.status) params.set("status", state.status);
  if (state.type) params.set("type", state.type);
  const token = state.tokens[state.page];
  if (token) params.set("page_token", token);
  const page = await api(`/tasks?${params}`);
  state.next = page.next_page_token || null;
  const rows = page.tasks.map((task) => {
    rememberType(task.type);
    return el(
      "tr",
      { dataset: { taskId: task.task_id, status: task.status } },
      el("td", {}, taskLink(task.task_id)),
      el("td", {}, task.type),
      el("td", {}, statusBadge(task.status)),
      el("td", {}, `${task.attempts} / ${task.max_attempts}`),
      el("td", {}, when(task.created_at)),
      el("td", {}, when(task.finished_at)),
    );
  });
  $("tasks").tBodies[0].replaceChildren(...rows);
  $("tasks-empty").hidden = rows.length > 0;
  $("prev").disabled = state.page === 0;
  $("next").disabled = !state.next;
  $("page-no").textContent = `page ${state.page + 1}`;
}

async function loadDeadLetters() {
  const page = await api(`/tasks?status=failed&limit=${PAGE_SIZE}`);
  const rows = page.tasks.map((task) =>
    el(
      "tr",
      { dataset: { taskId: task.task_id } },
      el("td", {}, taskLink(task.task_id)),
      el("td", {}, task.type),
      el("td", { className: "error-text" }, task.error ? `${task.error.code}: ${task.error.message}` : ""),
      el("td", {}, `${task.attempts} / ${task.max_attempts}`),
      el("td", {}, when(task.finished_at)),
      el("td", {}, el("button", { type: "button", className: "replay", dataset: { replay: task.task_id }, onclick: () => replay(task.task_id) }, "Replay")),
    ),
  );
  $("dead").tBodies[0].replaceChildren(...rows);
  $("dead-empty").hidden = rows.length > 0;
}

async function loadDetail() {
  if (!state.open) return;
  let task;
  try {
    task = await api(`/tasks/${encodeURIComponent(state.open)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      closeDetail();
      return;
    }
    throw error;
  }
  $("detail-id").textContent = task.task_id;
  const fields = [
    ["Status", statusBadge(task.status)],
    ["Type", task.type],
    ["Attempts", `${task.attempts} of ${task.max_attempts}`],
    ["Created", when(task.created_at)],
    ["Started", when(task.started_at)],
    ["Finished", when(task.finished_at)],
  ];
  // Why a queued or waiting task has not started (a concurrency slot, its dependencies).
  if (task.blocked_by) fields.push(["Waiting for", task.blocked_by]);
  if (task.priority !== undefined && task.priority !== null) fields.push(["Priority", String(task.priority)]);
  const traceLink = traceUrl(task.trace_id);
  if (traceLink) {
    fields.push(["Trace", el("a", { href: traceLink, target: "_blank", rel: "noopener noreferrer" }, task.trace_id)]);
  } else if (task.trace_id) {
    fields.push(["Trace", task.trace_id]);
  }
  $("detail-fields").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { field: name.toLowerCase().replaceAll(" ", "-") } }, value)]));
  const output = $("detail-output");
  if (task.status === "succeeded") {
    $("detail-output-title").textContent = "Result";
    output.textContent = JSON.stringify(task.result, null, 2);
    output.className = "";
  } else if (task.status === "failed" && task.error) {
    $("detail-output-title").textContent = "Error";
    output.textContent = `${task.error.code}: ${task.error.message}`;
    output.className = "error-text";
  } else {
    $("detail-output-title").textContent = "";
    output.textContent = "";
  }
  $("detail-replay").hidden = task.status !== "failed";
  $("detail").hidden = false;
}

async function loadTypes() {
  // The served OpenAPI document lists exactly the types this deployment accepts.
  try {
    const spec = await api("/openapi.json");
    const mapping = spec?.components?.schemas?.TaskRequest?.discriminator?.mapping || {};
    Object.keys(mapping).forEach(rememberType);
  } catch {
    // The filter still offers every type seen in the list.
  }
}

function rememberType(type) {
  if (!type || state.types.has(type)) return;
  state.types.add(type);
  const select = $("filter-type");
  const options = [...state.types].sort().map((t) => el("option", { value: t }, t));
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "any"), ...options);
  select.value = chosen;
}

async function refresh() {
  if (!state.key) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    await Promise.all([loadCounts(), loadUsage(), loadTasks(), loadDeadLetters(), loadDetail()]);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      logout("The key was refused: missing, unknown or revoked.");
      return;
    }
    say(`Could not refresh: ${error.message}`, true);
  } finally {
    state.busy = false;
  }
  if (state.again) {
    state.again = false;
    await refresh();
  }
}

// --- actions ----------------------------------------------------------------------

function openTask(taskId) {
  state.open = taskId;
  loadDetail().catch((error) => say(`Could not open the task: ${error.message}`, true));
}

function closeDetail() {
  state.open = null;
  $("detail").hidden = true;
}

async function replay(taskId) {
  try {
    const view = await api(`/tasks/${encodeURIComponent(taskId)}:replay`, "POST");
    say(`Task ${view.task_id} is ${view.status} again.`);
  } catch (error) {
    say(`Replay refused: ${error.message}`, true);
  }
  await refresh();
}

function resetPaging() {
  state.tokens = [null];
  state.page = 0;
}

function login(key) {
  state.key = key;
  sessionStorage.setItem(KEY, key);
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("session").textContent = `key ${key.split("_")[1] || ""}`;
  loadTypes();
  refresh();
  schedule();
}

function logout(why = "") {
  state.key = null;
  sessionStorage.removeItem(KEY);
  closeDetail();
  clearInterval(state.timer);
  state.timer = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("session").textContent = "";
  $("login-error").textContent = why;
}

function schedule() {
  clearInterval(state.timer);
  state.timer = null;
  if ($("auto-refresh").checked) {
    state.timer = setInterval(() => {
      if (document.visibilityState === "visible") refresh();
    }, REFRESH_MS);
  }
}

function start() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    $("login-error").textContent = "";
    if (key) login(key);
  });
  $("logout").addEventListener("click", () => logout());
  $("filter-status").addEventListener("change", (event) => {
    state.status = event.target.value;
    resetPaging();
    refresh();
  });
  $("filter-type").addEventListener("change", (event) => {
    state.type = event.target.value;
    resetPaging();
    refresh();
  });
  $("next").addEventListener("click", () => {
    if (!state.next) return;
    state.tokens[state.page + 1] = state.next;
    state.page += 1;
    refresh();
  });
  $("prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    refresh();
  });
  $("refresh").addEventListener("click", () => refresh());
  $("auto-refresh").addEventListener("change", schedule);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-replay").addEventListener("click", () => state.open && replay(state.open));
  if (state.key) login(state.key);
}

start();
