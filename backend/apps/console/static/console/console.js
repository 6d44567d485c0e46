// The console's behaviour. Plain JavaScript, no build step, no library. It speaks only the public API:
// fetch() for POST /api/agent/jobs, POST /api/agent/jobs/<id>/cancel and GET /api/agent/jobs (recent
// jobs), and EventSource for GET /api/agent/jobs/<id>/events (the steps and the answer as it is written).
// The session cookie authenticates every call; unsafe methods send the CSRF cookie back as X-CSRFToken.
"use strict";

(() => {
  const api = JSON.parse(document.getElementById("console-api").textContent);
  const $ = (id) => document.getElementById(id);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STEP_EVENTS = ["queued", "started", "retrieval", "llm.delta", "llm.done", "degraded", "job"];
  const RECENT_LIMIT = 15;
  const FOLLOW_WAIT_SEC = 25;

  const perJob = (template, id) => template.replace(api.placeholder, encodeURIComponent(id));

  // --- HTTP -------------------------------------------------------------------------------------------

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || `http_${status}`;
      this.details = error.details || null;
    }
  }

  async function call(method, url, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null; // not JSON (a proxy's page): reported by status below
    }
    if (!response.ok) {
      const error = new ApiError(response.status, (data && data.error) || {});
      if (response.status === 401 || error.code === "not_authenticated") signIn();
      throw error;
    }
    return data;
  }

  function signIn() {
    // The session ended: back to the login page, and here again afterwards (with the job in the hash).
    window.location.assign(`${api.login}?next=${encodeURIComponent(location.pathname + location.hash)}`);
  }

  // --- Small DOM helpers ------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function clock(value) {
    const date = value ? new Date(value) : null;
    return date && !Number.isNaN(date.getTime()) ? date.toLocaleTimeString() : "";
  }

  function ago(value) {
    const seconds = Math.max(0, (Date.now() - new Date(value).getTime()) / 1000);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return new Date(value).toLocaleDateString();
  }

  function usd(value) {
    return value === null || value === undefined ? "" : `${Number(value).toFixed(6)} USD`;
  }

  // --- The job being watched --------------------------------------------------------------------------

  const view = {
    id: null,
    generation: 0, // grows with every watch(): late callbacks of an earlier one see a stale number
    source: null,
    status: null,
    attempt: 0,
    answer: null, // the Text node deltas are appended to
  };

  function setStatus(status, degraded) {
    view.status = status;
    const badge = $("job-status");
    badge.textContent = status;
    badge.className = `badge ${status}`;
    $("cancel").hidden = TERMINAL.has(status);
    if (degraded && !$("job-degraded")) {
      badge.after(el("span", { id: "job-degraded", className: "badge degraded", textContent: "degraded" }));
    } else if (degraded === false && $("job-degraded")) {
      $("job-degraded").remove(); // the stored job says so (a superseded attempt's "degraded" no longer counts)
    }
    markRecent(view.id, status);
  }

  function addStep(text, { detail = "", at = null, kind = "done" } = {}) {
    const item = el(
      "li",
      { className: kind },
      el("span", { className: "what", textContent: text }),
      at ? el("span", { className: "when", textContent: clock(at) }) : null,
      detail ? el("span", { className: "detail", textContent: detail }) : null,
    );
    $("steps").append(item);
    return item;
  }

  function resetAnswer() {
    const answer = $("answer");
    answer.replaceChildren();
    view.answer = document.createTextNode("");
    answer.append(view.answer);
  }

  function showBooks(books) {
    const list = $("books");
    list.replaceChildren(
      ...books.map((book) => {
        const by = [book.author, book.year].filter((x) => x !== null && x !== undefined && x !== "").join(", ");
        return el(
          "li",
          null,
          el("strong", { textContent: book.title || book.id }),
          by ? el("span", { className: "by", textContent: ` · ${by}` }) : null,
        );
      }),
    );
    $("books-block").hidden = books.length === 0;
  }

  function showError(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }

  function watch(jobId, { query = "" } = {}) {
    stopWatching();
    const generation = ++view.generation;
    const current = () => view.generation === generation;
    view.id = jobId;
    view.attempt = 0;
    history.replaceState(null, "", `#job=${jobId}`); // a reload comes back to this job
    $("job").hidden = false;
    $("job-id").textContent = jobId.slice(0, 8);
    $("job-id").title = jobId;
    $("job-query").textContent = query;
    $("steps").replaceChildren();
    $("job-meta").textContent = "";
    $("job-degraded")?.remove();
    showError($("job-error"), "");
    showBooks([]);
    resetAnswer();
    setStatus("connecting");
    $("cancel").hidden = false;
    $("cancel").disabled = false;
    highlightRecent(jobId);

    // EventSource reconnects by itself after a drop and sends Last-Event-ID, so the server resumes after
    // the last event we saw. After a page reload we open a new stream without it and get the whole
    // history again, which rebuilds this view from the start.
    const source = new EventSource(perJob(api.events, jobId));
    view.source = source;
    for (const name of STEP_EVENTS) {
      source.addEventListener(name, (event) => {
        if (!current()) return; // a stream we stopped watching
        let data = {};
        try {
          data = JSON.parse(event.data || "{}");
        } catch (_) {
          data = { text: event.data };
        }
        // An attempt that was taken over and woke up late may still write: only the newest one counts.
        if (data.attempt !== undefined && Number(data.attempt) < view.attempt) return;
        HANDLERS[name](data);
      });
    }
    source.addEventListener("open", () => {
      if (current()) $("job-meta").textContent = "";
    });
    source.addEventListener("error", () => {
      if (!current()) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused rather than dropped (no such job, signed out, no events endpoint): follow the job
        // itself instead.
        stopWatching();
        follow(jobId, current);
      } else {
        $("job-meta").textContent = "Connection lost; reconnecting…";
      }
    });
  }

  function stopWatching() {
    if (view.source) view.source.close();
    view.source = null;
    $("answer").classList.remove("streaming");
  }

  async function follow(jobId, current) {
    // Without a stream: wait on the job (GET ?wait= answers when it ends, or after the wait) until it ends.
    while (current()) {
      let job;
      try {
        job = await call("GET", `${perJob(api.job, jobId)}?wait=${FOLLOW_WAIT_SEC}`);
      } catch (error) {
        if (!current()) return;
        setStatus("unknown");
        $("cancel").hidden = true;
        showError($("job-error"), error.status === 404 ? "No such job (it may have been purged)." : error.message);
        return;
      }
      if (!current()) return;
      if (TERMINAL.has(job.status)) {
        finish(job);
        return;
      }
      $("job-query").textContent = job.query;
      setStatus(job.status);
      $("job-meta").textContent = "Live events are unavailable; showing the answer when the job ends.";
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  // One handler per event of GET /api/agent/jobs/<id>/events (docs/api.md, "Waiting and streaming").
  const WHY = {
    llm_failed: "the language model failed; the answer lists the books found",
    vector_store_unavailable: "the vector store was unavailable; exact search over the catalogue answered",
  };

  const TRACE_NAMES = { retrieve: "Books found", prompt: "Prompt built", llm: "Answer written", compose: "Result composed" };

  const HANDLERS = {
    queued() {
      setStatus("queued");
      addStep("Queued");
    },
    started(data) {
      const attempt = Number(data.attempt) || view.attempt + 1;
      if (view.attempt > 0 && attempt > view.attempt) {
        // The previous attempt died (its worker was killed): its text is discarded, the answer starts over.
        resetAnswer();
        addStep(`Attempt ${view.attempt} was interrupted`, { kind: "warn" });
      }
      view.attempt = attempt;
      setStatus("running");
      addStep(attempt > 1 ? `Started (attempt ${attempt})` : "Started");
    },
    retrieval(data) {
      const books = data.books || [];
      const titles = books.map((b) => b.title || b.id).slice(0, 5);
      const more = books.length > titles.length ? `, and ${books.length - titles.length} more` : "";
      const how = data.source === "exact" ? " by exact search" : "";
      addStep(`Found ${books.length} book${books.length === 1 ? "" : "s"}${how}`, {
        detail: titles.join(" · ") + more,
      });
      showBooks(books);
    },
    "llm.delta"(data) {
      if (data.attempt !== undefined && Number(data.attempt) !== view.attempt) return; // not this attempt
      view.answer.appendData(data.text || "");
      $("answer").classList.add("streaming");
    },
    "llm.done"(data) {
      $("answer").classList.remove("streaming");
      const usage = data.usage || {};
      const parts = [];
      if (usage.prompt_tokens !== undefined) {
        parts.push(`${usage.prompt_tokens} + ${usage.completion_tokens} tokens${usage.estimated ? " (estimated)" : ""}`);
      }
      if (data.cost_usd !== undefined) parts.push(usd(data.cost_usd));
      if (data.error) parts.push(`${data.error.code}: ${data.error.message}`);
      addStep(data.error ? "The model call failed" : "Answer written", {
        detail: parts.join(" · "),
        kind: data.error ? "warn" : "done",
      });
    },
    degraded(data) {
      addStep("Degraded answer", { detail: WHY[data.why] || data.why || "", kind: "warn" });
      setStatus(view.status, true);
    },
    job(data) {
      finish(data);
    },
  };

  function finish(job) {
    stopWatching();
    $("job-query").textContent = job.query || $("job-query").textContent;
    // The stored job is the truth: its message replaces the streamed text (they are the same when the
    // stream was complete).
    if (typeof job.message === "string" && job.message !== "") {
      resetAnswer();
      view.answer.appendData(job.message);
    }
    if (Array.isArray(job.results) && job.results.length) showBooks(job.results);
    if (!$("steps").children.length && Array.isArray(job.trace)) {
      // No events were seen (the job was followed without a stream): its stored trace tells the steps.
      for (const step of job.trace) {
        addStep(TRACE_NAMES[step.name] || step.name, {
          detail: `${step.duration_ms < 1 ? "<1" : Math.round(step.duration_ms)} ms${step.error ? ` · ${step.error.code || "error"}` : ""}`,
          kind: step.error ? "warn" : "done",
        });
      }
    }
    const kind = job.status === "succeeded" ? "done" : job.status === "cancelled" ? "warn" : "bad";
    if (TERMINAL.has(job.status)) addStep(job.status[0].toUpperCase() + job.status.slice(1), { at: job.timings?.finished_at, kind });
    setStatus(job.status, job.degraded);
    if (job.error) showError($("job-error"), `${job.error.code}: ${job.error.message}`);
    const meta = [];
    if (job.attempts) meta.push(`${job.attempts} attempt${job.attempts === 1 ? "" : "s"}`);
    if (job.timings?.queue_ms != null) meta.push(`queued ${Math.round(job.timings.queue_ms)} ms`);
    if (job.timings?.run_ms != null) meta.push(`ran ${Math.round(job.timings.run_ms)} ms`);
    if (job.usage) meta.push(`${job.usage.prompt_tokens} + ${job.usage.completion_tokens} tokens`);
    if (job.cost_usd !== undefined) meta.push(usd(job.cost_usd));
    if (job.cost?.model) meta.push(job.cost.model);
    $("job-meta").textContent = meta.join(" · ");
    refreshRecent();
  }

  // --- Asking and cancelling --------------------------------------------------------------------------

  $("ask").addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    const topK = Number($("top_k").value);
    showError($("form-error"), "");
    if (!query) {
      showError($("form-error"), "Write a question first.");
      return;
    }
    $("ask-button").disabled = true;
    try {
      const body = { query };
      if (Number.isInteger(topK) && topK > 0) body.top_k = topK;
      const job = await call("POST", api.jobs, body);
      watch(String(job.id), { query });
      refreshRecent();
    } catch (error) {
      const details = error.details ? ` ${JSON.stringify(error.details)}` : "";
      showError($("form-error"), `${error.message}${details}`);
    } finally {
      $("ask-button").disabled = false;
    }
  });

  $("cancel").addEventListener("click", async () => {
    const button = $("cancel");
    button.disabled = true;
    // Shown before the request is answered: the stream may bring the job's end (its "Cancelled" step)
    // before the cancel's own response arrives, and the request must read before the outcome.
    const requested = addStep("Cancel requested", { kind: "warn" });
    try {
      // A queued job is cancelled at once, a running one at its next step; the stream says when.
      await call("POST", perJob(api.cancel, view.id));
    } catch (error) {
      requested.remove();
      showError($("job-error"), error.message);
      button.disabled = false;
    }
  });

  // --- Recent jobs ------------------------------------------------------------------------------------

  async function refreshRecent() {
    const list = $("recent");
    try {
      const page = await call("GET", `${api.jobs}?limit=${RECENT_LIMIT}`);
      const rows = page.results || [];
      if (!rows.length) {
        list.replaceChildren(el("li", { className: "muted", textContent: "No jobs yet: ask something." }));
        return;
      }
      list.replaceChildren(
        ...rows.map((job) => {
          const id = String(job.id);
          const link = el(
            "a",
            { href: `#job=${id}` },
            el("span", { className: "q", textContent: job.query, title: job.query }),
            el("span", { className: `badge ${job.status}`, textContent: job.status }),
            el("span", { className: "t", textContent: `${ago(job.created_at)}${job.degraded ? " · degraded" : ""}` }),
          );
          link.addEventListener("click", (event) => {
            event.preventDefault();
            watch(id, { query: job.query });
          });
          const item = el("li", null, link);
          item.dataset.jobId = id;
          if (id === view.id) item.classList.add("current");
          return item;
        }),
      );
    } catch (error) {
      list.replaceChildren(el("li", { className: "error", textContent: `Could not load your jobs: ${error.message}` }));
    }
  }

  function highlightRecent(jobId) {
    for (const item of $("recent").querySelectorAll("li[data-job-id]")) {
      item.classList.toggle("current", item.dataset.jobId === jobId);
    }
  }

  function markRecent(jobId, status) {
    const badge = $("recent").querySelector(`li[data-job-id="${CSS.escape(jobId || "")}"] .badge`);
    if (badge && status !== "connecting") {
      badge.textContent = status;
      badge.className = `badge ${status}`;
    }
  }

  $("refresh").addEventListener("click", refreshRecent);

  // --- Start ------------------------------------------------------------------------------------------

  function jobFromHash() {
    const match = location.hash.match(/^#job=([0-9a-fA-F-]{36})$/);
    return match ? match[1] : null;
  }

  window.addEventListener("hashchange", () => {
    const id = jobFromHash();
    if (id && id !== view.id) watch(id);
  });

  refreshRecent();
  const resumed = jobFromHash();
  if (resumed) watch(resumed);
})();
