// The batchgate web UI: the tool catalogue, a form per tool generated from its parameter
// schema, live job status, results, downloads, logs, cancel, and the job history. Plain
// DOM, no framework, no CDN; it talks to the API through /v1/client.js.

import { BatchgateError, fetchResult, submit, waitFor } from "/v1/client.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const KEY = "batchgate.key";
let following = null; // AbortController of the job being followed

// ---- small helpers -------------------------------------------------------------------

/** Builds an element: h("a", {href: "#"}, "text", child…). Text is never parsed as HTML. */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function headers(extra = {}) {
  const result = { ...extra };
  const key = localStorage.getItem(KEY);
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function show(...children) {
  main.replaceChildren(...children);
}

function say(message, { kind = "error", fields = [] } = {}) {
  notice.className = kind === "info" ? "info" : "";
  notice.replaceChildren(
    h("div", {}, message),
    fields.length ? h("ul", {}, fields.map((f) => h("li", {}, h("code", {}, f.path), ": ", f.message))) : null,
  );
  notice.hidden = false;
}

function clearNotice() {
  notice.hidden = true;
  notice.replaceChildren();
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers ?? {}) });
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not a problem document */ }
    throw new BatchgateError(`${response.status} ${problem?.code ?? ""}: ${problem?.detail ?? response.statusText}`,
      { problem, httpStatus: response.status });
  }
  return response;
}

function explain(error) {
  if (error instanceof BatchgateError && error.problem) {
    const problem = error.problem;
    if (error.httpStatus === 401) {
      say(`${problem.detail ?? problem.title} Enter an API key above.`);
      document.getElementById("api-key").focus();
      return;
    }
    say(`${problem.title}: ${problem.detail ?? ""} (${problem.code})`, { fields: problem.errors ?? [] });
    return;
  }
  if (error?.name === "AbortError") return;
  say(String(error?.message ?? error));
}

const when = (time) => (time ? new Date(time).toLocaleString() : "—");

function badge(state) {
  return h("span", { class: `status ${state}`, dataset: { state } }, state);
}

// ---- the API key ---------------------------------------------------------------------

const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
keyInput.value = localStorage.getItem(KEY) ?? "";
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
  say(key ? "Key saved in this browser." : "No key kept.", { kind: "info" });
  route();
});
document.getElementById("forget-key").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  keyInput.value = "";
  say("Key forgotten.", { kind: "info" });
});

// ---- the catalogue -------------------------------------------------------------------

async function catalogue() {
  const { tools } = await (await api("/v1/tools")).json();
  show(
    h("h1", {}, "Tools"),
    h("div", { class: "cards" }, tools.map((tool) =>
      h("section", { class: "card", "aria-labelledby": `tool-${tool.name}` },
        h("h2", { id: `tool-${tool.name}` }, h("a", { href: `#/tools/${encodeURIComponent(tool.name)}` }, tool.title || tool.name)),
        h("p", { class: "muted" }, h("code", {}, `${tool.name}@${tool.version}`)),
        h("p", {}, tool.description)))),
  );
}

// ---- a tool's form -------------------------------------------------------------------

function parameterField(name, schema, required) {
  const id = `param-${name}`;
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  let control;
  if (Array.isArray(schema.enum)) {
    control = h("select", { id, name }, schema.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
  } else if (type === "boolean") {
    control = h("input", { id, name, type: "checkbox" });
  } else if (type === "integer" || type === "number") {
    control = h("input", {
      id, name, type: "number", step: type === "integer" ? "1" : "any",
      min: schema.minimum, max: schema.maximum, required: required || null,
    });
  } else if (type === "string") {
    control = h("input", { id, name, type: "text", maxlength: schema.maxLength, pattern: schema.pattern, required: required || null });
  } else {
    // arrays and objects: edited as JSON
    control = h("textarea", { id, name, rows: "2", class: "json", spellcheck: "false" });
  }
  control.dataset.kind = control.tagName === "TEXTAREA" ? "json" : type ?? "json";
  const help = [schema.description, schema.type === "array" || !type ? "(JSON)" : null].filter(Boolean).join(" ");
  return h("div", { class: "field", dataset: { path: `/parameters/${name}` } },
    h("label", { for: id }, name, required ? " *" : ""),
    control,
    help ? h("div", { class: "help" }, help) : null);
}

function setParameter(form, name, value) {
  const control = form.elements.namedItem(name);
  if (!control || value === undefined) return;
  if (control.dataset.kind === "boolean") control.checked = Boolean(value);
  else if (control.tagName === "SELECT") control.value = JSON.stringify(value);
  else if (control.dataset.kind === "json") control.value = JSON.stringify(value);
  else control.value = value;
}

function readParameters(form, properties) {
  const parameters = {};
  for (const name of Object.keys(properties)) {
    const control = form.elements.namedItem(name);
    if (!control) continue;
    const kind = control.dataset.kind;
    if (kind === "boolean") { parameters[name] = control.checked; continue; }
    const text = control.value.trim();
    if (text === "") continue;
    if (control.tagName === "SELECT" || kind === "json") {
      try { parameters[name] = JSON.parse(text); } catch { parameters[name] = text; }
    } else if (kind === "integer" || kind === "number") {
      parameters[name] = Number(text);
    } else {
      parameters[name] = control.value;
    }
  }
  return parameters;
}

function inputBlock(input) {
  const id = `input-${input.name}`;
  const columns = input.columns?.length ? ` with columns ${input.columns.join(", ")}` : "";
  return h("div", { class: "input", dataset: { path: `/inputs/${input.name}` } },
    h("label", { for: id }, h("strong", {}, input.name), input.required ? " *" : "",
      h("span", { class: "muted" }, ` — ${input.format}${columns}`)),
    h("textarea", {
      id, name: `input:${input.name}`, spellcheck: "false",
      placeholder: "Paste the data (its text, or a JSON array of records) or choose a file below",
    }),
    h("div", { class: "row" },
      h("label", { for: `${id}-file` }, "or upload a file: "),
      h("input", { id: `${id}-file`, name: `file:${input.name}`, type: "file", accept: (input.media_types ?? []).join(",") })));
}

/** Pasted records (a JSON array) are sent as JSON, as in a JSON body; other text as the
 * input's own media type. */
function pastedType(text, input) {
  if (/^\s*\[/.test(text)) {
    try { JSON.parse(text); return "application/json"; } catch { /* not JSON: the file's text */ }
  }
  return input.media_types?.[0] ?? "text/plain";
}

function markFaults(form, problem) {
  for (const element of form.querySelectorAll(".invalid")) element.classList.remove("invalid");
  for (const element of form.querySelectorAll(".fault")) element.remove();
  for (const fault of problem?.errors ?? []) {
    const holder = [...form.querySelectorAll("[data-path]")]
      .find((element) => fault.path === element.dataset.path || fault.path.startsWith(`${element.dataset.path}/`));
    if (!holder) continue;
    holder.classList.add("invalid");
    holder.append(h("div", { class: "fault" }, fault.message));
  }
}

async function toolPage(reference) {
  const tool = await (await api(`/v1/tools/${encodeURIComponent(reference)}`)).json();
  const properties = tool.parameters?.properties ?? {};
  const required = new Set(tool.parameters?.required ?? []);
  const form = h("form", { id: "job-form", novalidate: true },
    tool.inputs.length ? h("fieldset", {}, h("legend", {}, "Inputs"), tool.inputs.map(inputBlock)) : null,
    Object.keys(properties).length
      ? h("fieldset", {}, h("legend", {}, "Parameters"),
        Object.entries(properties).map(([name, schema]) => parameterField(name, schema, required.has(name))))
      : null,
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "submit-job" }, "Run"),
      h("button", { type: "button", class: "secondary", id: "load-example", onclick: () => loadExample() }, "Load the example"),
      h("button", { type: "reset", class: "secondary" }, "Clear")));

  function loadDefaults() {
    for (const [name, schema] of Object.entries(properties)) setParameter(form, name, schema.default);
  }
  function loadExample() {
    loadDefaults();
    for (const [name, value] of Object.entries(tool.example.parameters ?? {})) setParameter(form, name, value);
    for (const [name, value] of Object.entries(tool.example.inputs ?? {})) {
      const area = form.elements.namedItem(`input:${name}`);
      if (area) area.value = typeof value === "string" ? value : JSON.stringify(value, null, 1);
    }
    clearNotice();
  }
  form.addEventListener("reset", () => setTimeout(loadDefaults));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearNotice();
    markFaults(form, null);
    const parameters = readParameters(form, properties);
    const files = tool.inputs.filter((input) => form.elements.namedItem(`file:${input.name}`)?.files.length);
    let init;
    if (files.length) {
      const body = new FormData();
      for (const input of tool.inputs) {
        const file = form.elements.namedItem(`file:${input.name}`)?.files[0];
        const text = form.elements.namedItem(`input:${input.name}`)?.value;
        if (file) body.append(input.name, file, file.name);
        else if (text) body.append(input.name, new Blob([text], { type: pastedType(text, input) }), input.name);
      }
      body.append("parameters", new Blob([JSON.stringify(parameters)], { type: "application/json" }));
      init = { body, headers: headers() };
    } else {
      const inputs = {};
      for (const input of tool.inputs) {
        const text = form.elements.namedItem(`input:${input.name}`)?.value ?? "";
        if (!text.trim()) continue;
        inputs[input.name] = pastedType(text, input) === "application/json" ? JSON.parse(text) : text;
      }
      init = { body: JSON.stringify({ inputs, parameters }), headers: headers({ "Content-Type": "application/json" }) };
    }
    const button = document.getElementById("submit-job");
    button.disabled = true;
    try {
      const status = await submit(tool.submit, init);
      location.hash = `#/jobs/${status.id}`;
    } catch (error) {
      explain(error);
      markFaults(form, error.problem);
    } finally {
      button.disabled = false;
    }
  });
  loadDefaults();
  const versions = tool.versions.length > 1
    ? h("p", {}, "Versions: ", tool.versions.map((v) =>
      h("a", { href: `#/tools/${encodeURIComponent(`${tool.name}@${v}`)}`, "aria-current": v === tool.version ? "page" : null, style: "margin-right:.75rem" }, `v${v}`)))
    : null;
  show(
    h("h1", {}, tool.title || tool.name, " ", h("small", { class: "muted" }, `${tool.name}@${tool.version}`)),
    h("p", {}, tool.description),
    versions,
    form,
    h("details", {}, h("summary", {}, "Limits and outputs"),
      h("dl", { class: "facts" },
        h("dt", {}, "Time limit"), h("dd", {}, `${tool.limits.timeout_seconds} s`),
        h("dt", {}, "Request size"), h("dd", {}, `${tool.limits.max_request_bytes} bytes`),
        h("dt", {}, "Outputs"), h("dd", {}, tool.outputs.map((o) => `${o.name} (${o.media_type})`).join(", ")))),
  );
}

// ---- a job ---------------------------------------------------------------------------

function resultView(result) {
  const blocks = [];
  for (const [name, value] of Object.entries(result ?? {})) {
    const rows = Array.isArray(value) ? value : null;
    if (rows && rows.length && rows.every((row) => row && typeof row === "object" && !Array.isArray(row))) {
      const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
      blocks.push(h("h3", {}, name, h("span", { class: "muted" }, ` — ${rows.length} rows`)),
        h("div", { class: "table-wrap" }, h("table", { dataset: { output: name } },
          h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", {}, row[c] == null ? "" : String(row[c])))))))));
    } else {
      blocks.push(h("h3", {}, name), h("pre", {}, JSON.stringify(value, null, 2)));
    }
  }
  const json = h("pre", { hidden: true, id: "result-json" }, JSON.stringify(result, null, 2));
  const toggle = h("button", {
    type: "button", class: "secondary", "aria-controls": "result-json", "aria-expanded": "false",
    onclick: () => {
      json.hidden = !json.hidden;
      toggle.setAttribute("aria-expanded", String(!json.hidden));
      toggle.textContent = json.hidden ? "Show JSON" : "Hide JSON";
    },
  }, "Show JSON");
  return h("section", { id: "result", "aria-labelledby": "result-title" },
    h("h2", { id: "result-title" }, "Result"), blocks, h("div", { class: "actions" }, toggle), json);
}

async function downloadOutput(output, status) {
  try {
    const response = await api(output.href);
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") ?? "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? output.name;
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    explain(error);
  }
  return status;
}

async function showLogs(id, target, section) {
  try {
    target.textContent = await (await api(`/v1/jobs/${id}/logs`)).text() || "(nothing written)";
    section.hidden = false;
  } catch (error) {
    explain(error);
  }
}

async function jobPage(id) {
  following?.abort();
  following = new AbortController();
  const signal = following.signal;
  const state = h("span", { id: "job-state" }, badge("queued"));
  const bar = h("progress", { id: "job-progress", max: "100", "aria-label": "Progress" });
  const message = h("div", { id: "job-message", class: "muted", "aria-live": "polite" });
  const facts = h("dl", { class: "facts" });
  const errorBox = h("div", { id: "job-error" });
  const logs = h("pre", { id: "job-logs" });
  const logSection = h("section", { hidden: true, "aria-label": "Logs" }, h("h2", {}, "Logs"), logs);
  const cancel = h("button", {
    type: "button", class: "danger", id: "cancel-job",
    onclick: async () => {
      cancel.disabled = true;
      try {
        await api(`/v1/jobs/${id}`, { method: "DELETE" });
        say("Cancel requested.", { kind: "info" });
      } catch (error) {
        explain(error);
        cancel.disabled = false;
      }
    },
  }, "Cancel");
  const outputs = h("div", { id: "job-outputs", class: "actions" });
  const resultHolder = h("div");
  show(
    h("h1", {}, "Job ", h("code", {}, id)),
    h("p", {}, state),
    bar, message,
    h("div", { class: "actions" }, cancel,
      h("button", { type: "button", class: "secondary", onclick: () => showLogs(id, logs, logSection) }, "Show logs")),
    facts, errorBox, outputs, resultHolder, logSection,
  );

  function render(status) {
    state.replaceChildren(badge(status.status));
    const percent = status.progress?.percent;
    if (percent != null) bar.value = percent; else if (status.status === "succeeded") bar.value = 100; else bar.removeAttribute("value");
    message.textContent = [status.attempt > 1 ? `attempt ${status.attempt}` : null, status.progress?.message,
      status.cancel_requested ? "cancel requested" : null].filter(Boolean).join(" · ");
    facts.replaceChildren(
      h("dt", {}, "Tool"), h("dd", {}, status.tool ? `${status.tool}@${status.tool_version}` : "—"),
      h("dt", {}, "Created"), h("dd", {}, when(status.created_at)),
      h("dt", {}, "Started"), h("dd", {}, when(status.started_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(status.finished_at)),
      h("dt", {}, "Kept until"), h("dd", {}, when(status.expires_at)));
    cancel.hidden = ["succeeded", "failed", "canceled"].includes(status.status);
  }

  const placeholder = {
    id, status: "queued",
    links: { self: `/v1/jobs/${id}`, events: `/v1/jobs/${id}/events` },
  };
  try {
    const final = await waitFor(placeholder, { headers: headers() }, render, { signal });
    render(final);
    if (final.status === "failed" && final.error) {
      const e = final.error;
      errorBox.replaceChildren(h("h2", {}, "Why it failed"),
        h("p", {}, h("strong", {}, e.code), ": ", e.message, e.exit_code != null ? ` (exit code ${e.exit_code})` : ""),
        e.stderr_tail ? h("pre", {}, e.stderr_tail) : null);
    }
    if (final.status === "succeeded") {
      outputs.replaceChildren(...(final.links.outputs ?? []).map((output) =>
        h("button", { type: "button", class: "secondary", dataset: { output: output.name }, onclick: () => downloadOutput(output, final) },
          `Download ${output.name} (${output.size} bytes)`)));
      resultHolder.replaceChildren(resultView(await fetchResult(final, { headers: headers() }, signal)));
    }
  } catch (error) {
    explain(error);
  }
}

// ---- the history ---------------------------------------------------------------------

async function historyPage(params) {
  const query = new URLSearchParams(params);
  if (!query.get("limit")) query.set("limit", "20");
  const [page, catalogue] = await Promise.all([
    api(`/v1/jobs?${query}`).then((r) => r.json()),
    api("/v1/tools").then((r) => r.json()),
  ]);
  const filters = h("form", { class: "filters", id: "history-filters" },
    h("label", {}, "Status", h("select", { name: "status" },
      h("option", { value: "" }, "any"),
      ["queued", "running", "succeeded", "failed", "canceled"].map((s) => h("option", { value: s, selected: query.get("status") === s }, s)))),
    h("label", {}, "Tool", h("select", { name: "tool" },
      h("option", { value: "" }, "any"),
      catalogue.tools.map((t) => h("option", { value: t.name, selected: query.get("tool") === t.name }, t.name)))),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["status", "tool"]) {
      const value = filters.elements.namedItem(name).value;
      if (value) next.set(name, value);
    }
    location.hash = `#/jobs?${next}`;
  });
  const more = new URLSearchParams(query);
  more.set("cursor", page.next_cursor ?? "");
  show(
    h("h1", {}, "Job history"),
    filters,
    page.jobs.length === 0 ? h("p", {}, "No jobs.") : h("div", { class: "table-wrap" }, h("table", { id: "history" },
      h("thead", {}, h("tr", {}, ["Job", "Tool", "Status", "Created", "Finished", "Progress"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, page.jobs.map((job) => h("tr", {},
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, h("code", {}, job.id.slice(-12)))),
        h("td", {}, `${job.tool}@${job.tool_version}`),
        h("td", {}, badge(job.status)),
        h("td", {}, when(job.created_at)),
        h("td", {}, when(job.finished_at)),
        h("td", {}, job.status === "failed" ? job.error?.code ?? "" : job.progress?.percent != null ? `${Math.round(job.progress.percent)}%` : "")))))),
    h("div", { class: "actions" },
      query.get("cursor") ? h("button", { type: "button", class: "secondary", onclick: () => history.back() }, "← Newer") : null,
      page.next_cursor ? h("a", { href: `#/jobs?${more}`, id: "older" }, "Older →") : null),
  );
}

// ---- routing -------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?");
  if (!path.startsWith("/jobs/")) {
    following?.abort();
    following = null;
  }
  try {
    if (path === "/" || path === "/tools") await catalogue();
    else if (path.startsWith("/tools/")) await toolPage(decodeURIComponent(path.slice(7)));
    else if (path === "/jobs") await historyPage(Object.fromEntries(new URLSearchParams(search)));
    else if (path.startsWith("/jobs/")) await jobPage(decodeURIComponent(path.slice(6)));
    else show(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "The tools")));
  } catch (error) {
    explain(error);
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", () => {
  clearNotice();
  route();
});
route();
