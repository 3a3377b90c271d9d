// batchgate JavaScript client, served by the gateway at /v1/client.js (an ES module, no
// build step, no dependencies). It runs in a browser (on the gateway's pages, or on
// another origin that `cors_origins` allows) and in Node 18+ (download it once:
// `curl -o batchgate-client.mjs GATEWAY/v1/client.js`, then give absolute URLs): the
// links of a status document are resolved against the URL they came from.
//
//   import { fetchAndWait } from "/v1/client.js";
//   const result = await fetchAndWait("/v1/tools/analyzer/jobs",
//       { method: "POST", headers: { "Content-Type": "application/json" }, body },
//       (status) => console.log(status.status, status.progress));
//
// fetchAndWait posts the request, follows the job until it ends and returns its result
// (the outputs converted to JSON). It follows the job's event stream when the server has
// one (Server-Sent Events read with fetch, so that an Authorization header can be sent,
// resuming after the last event seen), and otherwise polls the status monitor honouring
// Retry-After. `onStatusPoll` gets the job's status document at every change or poll. A
// failed or canceled job, or a refused request, throws a BatchgateError.

/** An error answer (RFC 9457 problem) or a job that did not succeed. */
export class BatchgateError extends Error {
  constructor(message, { problem = null, status = null, httpStatus = 0 } = {}) {
    super(message);
    this.name = "BatchgateError";
    /** The problem document, when the server sent one. */
    this.problem = problem;
    /** The job's status document, when a job failed or was canceled. */
    this.status = status;
    this.httpStatus = httpStatus;
  }
  get code() {
    return this.problem?.code ?? (this.status ? `job-${this.status.status}` : null);
  }
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason ?? new DOMException("aborted", "AbortError"));
    }, { once: true });
  });

async function problemOf(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  const detail = problem?.detail ?? problem?.title ?? response.statusText;
  return new BatchgateError(`${response.status} ${problem?.code ?? "error"}: ${detail}`, {
    problem,
    httpStatus: response.status,
  });
}

/** Headers of `init` (an object, an array or a Headers) as a Headers object. */
function headersOf(init) {
  return new Headers(init?.headers ?? {});
}

/** `value` with every path in it (`/v1/…`, in objects and arrays too) resolved against
 * `base`; names, media types and numbers stay as they are. */
function resolved(value, base) {
  if (typeof value === "string") return value.startsWith("/") ? new URL(value, base).href : value;
  if (Array.isArray(value)) return value.map((item) => resolved(item, base));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolved(v, base)]));
  }
  return value;
}

/** A status document whose links are absolute: they were relative to `base` (itself
 * relative to the page, when there is one). */
function withAbsoluteLinks(status, base) {
  if (!status?.links || !base) return status;
  return { ...status, links: resolved(status.links, absolute(base)) };
}

/** The absolute URL of `url` (relative ones: to the page, where there is one). */
function absolute(url) {
  const page = globalThis.location?.href;
  return page ? new URL(url, page).href : new URL(url).href;
}

/** POSTs a job; returns its status document (the body of the 202). */
export async function submit(url, init = {}) {
  const response = await fetch(url, { method: "POST", ...init });
  if (!response.ok) {
    throw await problemOf(response);
  }
  return withAbsoluteLinks(await response.json(), response.url || absolute(url));
}

/**
 * Reads a job's Server-Sent Events, calling onEvent(event, id) for each, until the
 * stream ends. Resumes after `lastEventId`. Returns the id of the last event read.
 */
export async function followEvents(eventsUrl, { headers, signal, lastEventId, onEvent }) {
  const requestHeaders = new Headers(headers ?? {});
  requestHeaders.set("Accept", "text/event-stream");
  if (lastEventId != null) requestHeaders.set("Last-Event-ID", String(lastEventId));
  const response = await fetch(eventsUrl, { headers: requestHeaders, signal });
  if (response.status === 204) return lastEventId;
  if (!response.ok) throw await problemOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = lastEventId;
  let event = { data: [], type: "message", id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return id;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) {
          if (event.id != null) id = Number(event.id);
          onEvent(JSON.parse(event.data.join("\n")), id, event.type);
        }
        event = { data: [], type: "message", id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") event.data.push(text);
      else if (field === "event") event.type = text;
      else if (field === "id") event.id = text;
    }
  }
}

/** Applies an event to the last status document seen. */
function applyEvent(status, event) {
  if (event.job) return withAbsoluteLinks(event.job, status.links?.self);
  return {
    ...status,
    status: event.status,
    attempt: event.attempt,
    progress: event.progress,
    error: event.error,
    cancel_requested: event.cancel_requested ?? false,
  };
}

/**
 * Follows a job from its status document until it ends; returns the final status
 * document. Uses the event stream, falling back to polling (Retry-After) when it is not
 * available.
 */
export async function waitFor(status, init = {}, onStatusPoll = () => {}, options = {}) {
  const { signal, useEvents = true, maxPollSeconds = 30 } = options;
  const headers = headersOf(init);
  let current = status;
  if (useEvents && current.links?.events && !TERMINAL.has(current.status)) {
    let lastEventId = null;
    for (let failures = 0; failures < 5 && !TERMINAL.has(current.status);) {
      try {
        lastEventId = await followEvents(current.links.events, {
          headers,
          signal,
          lastEventId,
          onEvent: (event) => {
            current = applyEvent(current, event);
            failures = 0;
            onStatusPoll(current);
          },
        });
        if (!TERMINAL.has(current.status)) failures += 1; // the stream broke: resume
      } catch (error) {
        if (signal?.aborted) throw error;
        if (error instanceof BatchgateError && error.httpStatus !== 503) break;
        failures += 1;
        await sleep(500 * failures, signal);
      }
    }
    if (TERMINAL.has(current.status) && current.links?.outputs) return current;
  }
  // Polling: the status monitor answers 200 + Retry-After while pending; once the job has
  // ended it redirects (303) to the result, which fetch follows.
  for (;;) {
    const response = await fetch(current.links.self, {
      headers,
      signal,
      cache: "no-store",
    });
    if (response.redirected || response.status !== 200 && response.status !== 202) {
      // The result (or the failed job's problem): read the final state from its events.
      return finalStatus(current, headers, signal, response);
    }
    current = withAbsoluteLinks(await response.json(), response.url || current.links.self);
    onStatusPoll(current);
    if (TERMINAL.has(current.status)) return current;
    const retryAfter = Number(response.headers.get("Retry-After")) || 1;
    await sleep(Math.min(retryAfter, maxPollSeconds) * 1000, signal);
  }
}

async function finalStatus(current, headers, signal, response) {
  let final = current;
  try {
    await followEvents(current.links.events, {
      headers,
      signal,
      onEvent: (event) => {
        final = applyEvent(final, event);
      },
    });
  } catch {
    // no event stream: judge by the redirected answer
  }
  if (TERMINAL.has(final.status)) return final;
  if (response.ok) return { ...final, status: "succeeded" };
  const error = await problemOf(response);
  if (error.problem?.code === "job-failed") {
    return { ...final, status: "failed", error: error.problem.job_error };
  }
  if (error.problem?.code === "job-canceled") return { ...final, status: "canceled" };
  throw error;
}

/** A finished job's result: the JSON of its result link. */
export async function fetchResult(status, init = {}, signal) {
  const response = await fetch(status.links.result, { headers: headersOf(init), signal });
  if (!response.ok) throw await problemOf(response);
  return response.json();
}

/**
 * Submits (POST `url` with `init`), follows the job, calls `onStatusPoll(status)` at each
 * change or poll, and returns the result. Throws BatchgateError for a refused request, a
 * failed job (`error.status.error` says why) or a canceled one.
 */
export async function fetchAndWait(url, init = {}, onStatusPoll = () => {}, options = {}) {
  const submitted = await submit(url, init);
  onStatusPoll(submitted);
  const final = await waitFor(submitted, init, onStatusPoll, options);
  if (final.status === "failed") {
    const reason = final.error?.message ?? "the job failed";
    throw new BatchgateError(`job ${final.id} failed: ${reason}`, { status: final });
  }
  if (final.status === "canceled") {
    throw new BatchgateError(`job ${final.id} was canceled`, { status: final });
  }
  return fetchResult(final, init, options.signal);
}
