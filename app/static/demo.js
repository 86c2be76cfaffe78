// Demo page logic: POST /predict with explain=true, show the label, P(positive) and the words
// highlighted by attribution. User text only ever reaches the DOM via textContent / text nodes.
"use strict";

(() => {
  const TIMEOUT_MS = 30000;
  const MIN_SHOWN = 0.06; // attributions below 6% of the largest are left unhighlighted
  const BR = /<br\s*\/?>/gi; // IMDb reviews use <br /> for line breaks: show them as breaks

  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const input = $("text");
  const submit = $("submit");
  const status = $("status");
  const errorBox = $("error");
  const result = $("result");

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    result.hidden = true; // an older answer below a new error would read as the answer to this text
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    input.removeAttribute("aria-invalid");
  }

  // The service's error bodies: FastAPI's {"detail": str | [{msg}]} or {"error": {message}} / {"message"}.
  function describe(body) {
    if (!body || typeof body !== "object") return "";
    const err = body.error;
    if (err && typeof err === "object" && typeof err.message === "string") return err.message;
    if (typeof err === "string") return err;
    if (typeof body.message === "string") return body.message;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => (d && d.msg) || "").filter(Boolean).join("; ");
    }
    return "";
  }

  async function errorMessage(response) {
    let detail = "";
    try {
      detail = describe(await response.json());
    } catch (_) {
      // not JSON (a proxy's error page, say): the status alone has to do
    }
    const suffix = detail ? ` (${detail})` : "";
    switch (response.status) {
      case 401:
        return "This server requires an API key, which the demo page cannot send; use the API directly (see /docs).";
      case 413:
        return `This review is too long for the service; please shorten it${suffix}.`;
      case 422:
        return `The service could not use this text${suffix}.`;
      case 429:
      case 503: {
        const retry = response.headers.get("Retry-After");
        const when = retry ? ` in ${retry} s` : " in a moment";
        return `The server is busy right now; please try again${when}.`;
      }
      case 504:
        return "The server took too long to answer; please try again.";
      default:
        return `The server answered with an error (HTTP ${response.status})${suffix}.`;
    }
  }

  // Text node for a gap between tokens, with <br /> tags turned into line breaks.
  function appendGap(parent, text) {
    const parts = text.split(BR);
    parts.forEach((part, i) => {
      if (i > 0) parent.appendChild(document.createElement("br"));
      if (part) parent.appendChild(document.createTextNode(part));
    });
  }

  function renderHighlight(text, tokens) {
    const box = $("highlight");
    box.replaceChildren();
    const sorted = tokens.slice().sort((a, b) => a.start - b.start);
    const peak = Math.max(1e-12, ...sorted.map((t) => Math.abs(t.attribution)));
    let at = 0;
    for (const t of sorted) {
      if (t.start < at || t.end > text.length || t.end <= t.start) continue; // defensive: skip bad spans
      appendGap(box, text.slice(at, t.start));
      const word = text.slice(t.start, t.end);
      const strength = Math.abs(t.attribution) / peak;
      if (strength < MIN_SHOWN) {
        box.appendChild(document.createTextNode(word));
      } else {
        const span = document.createElement("span");
        const positive = t.attribution > 0;
        span.className = `tok ${positive ? "tok-pos" : "tok-neg"}`;
        span.textContent = word;
        span.style.backgroundColor = `rgba(var(${positive ? "--pos" : "--neg"}), ${(0.08 + 0.72 * strength).toFixed(3)})`;
        span.title = `${positive ? "towards positive" : "towards negative"}: ${t.attribution.toFixed(4)}`;
        span.dataset.attribution = String(t.attribution);
        box.appendChild(span);
      }
      at = t.end;
    }
    appendGap(box, text.slice(at));
  }

  function render(text, prediction, elapsedMs) {
    const p = prediction.p_positive;
    const label = $("label");
    label.textContent = prediction.label;
    label.className = `label ${prediction.label}`;
    $("score").textContent = `${(100 * prediction.score).toFixed(1)}% ${prediction.label} · P(positive) = ${p.toFixed(3)}`;
    const percent = Math.round(100 * p);
    $("bar").setAttribute("aria-valuenow", String(percent));
    $("bar").setAttribute("aria-valuetext", `${percent}% positive`);
    // A centred scale: the fill grows from the middle (P = 0.5, undecided) towards the predicted side, so its
    // length is the confidence (|P - 0.5|, the whole half at P = 0 or 1) and its colour the label.
    const fill = $("bar-fill");
    fill.className = `bar-fill ${p >= 0.5 ? "positive" : "negative"}`;
    fill.style.left = `${(100 * Math.min(p, 0.5)).toFixed(1)}%`;
    fill.style.width = `${(100 * Math.abs(p - 0.5)).toFixed(1)}%`;

    const tokens = (prediction.explanation && prediction.explanation.tokens) || [];
    renderHighlight(text, tokens);

    const truncated = $("truncated");
    truncated.hidden = !prediction.truncated;
    truncated.textContent = prediction.truncated
      ? `Long review: the model read ${tokens.length} of its ${prediction.n_tokens} words (the start and the end); the middle is not highlighted.`
      : "";
    $("latency").textContent = `Answered in ${Math.round(elapsedMs)} ms (round trip, including the explanation).`;
    result.hidden = false;
  }

  let inFlight = null;

  async function analyse(event) {
    if (event) event.preventDefault();
    clearError();
    const text = input.value;
    if (!text.trim()) {
      input.setAttribute("aria-invalid", "true");
      showError("Please type or paste a review first.");
      input.focus();
      return;
    }
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const timer = setTimeout(() => controller.abort("timeout"), TIMEOUT_MS);
    submit.disabled = true;
    status.textContent = "Analysing…";
    const started = performance.now();
    try {
      const response = await fetch("/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ text, explain: true }),
        signal: controller.signal,
      });
      const elapsed = performance.now() - started;
      if (!response.ok) {
        showError(await errorMessage(response));
        return;
      }
      const body = await response.json();
      const prediction = body && Array.isArray(body.predictions) ? body.predictions[0] : null;
      if (!prediction) {
        showError("The server sent an answer this page does not understand.");
        return;
      }
      render(text, prediction, elapsed);
    } catch (err) {
      if (controller.signal.aborted && controller.signal.reason !== "timeout" && inFlight !== controller) return; // superseded
      showError(
        controller.signal.reason === "timeout"
          ? `The server did not answer within ${TIMEOUT_MS / 1000} s; please try again.`
          : "Could not reach the server: check your connection and that the service is running."
      );
    } finally {
      clearTimeout(timer);
      if (inFlight === controller) {
        inFlight = null;
        submit.disabled = false;
        status.textContent = "";
      }
    }
  }

  async function loadModelInfo() {
    const info = $("model-info");
    try {
      const response = await fetch("/model", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(String(response.status));
      const model = await response.json();
      const name = model.name || model.model || "model";
      const version = model.version || model.model_version || "";
      info.textContent = `Model: ${name}${version ? ` ${version}` : ""}`;
    } catch (_) {
      info.textContent = "Model: unavailable";
    }
  }

  form.addEventListener("submit", analyse);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) analyse(event);
  });
  input.addEventListener("input", () => {
    if (input.value.trim()) clearError();
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => {
      input.value = button.dataset.text;
      analyse();
    });
  }
  loadModelInfo();
})();
