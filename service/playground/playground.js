// nl2dsl playground: plain JS over the public API (no build step).
"use strict";
const $ = (id) => document.getElementById(id);
const KEYWORDS = /^(when|then|SELECT|FROM|WHERE|GROUP|BY|ORDER|LIMIT|JOIN|ON|AND|OR|AS|ASC|DESC|COUNT|SUM|AVG|MIN|MAX|DISTINCT|true|false)$/;

$("api-key").value = sessionStorage.getItem("nl2dsl-key") || "";
$("api-key").addEventListener("change", () => { sessionStorage.setItem("nl2dsl-key", $("api-key").value); loadLists(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw apiError(response.status, data);
  return data;
}

function apiError(status, data) {
  const e = (data && data.error) || { type: "http_error", message: "HTTP " + status };
  const err = new Error(`${status} ${e.type}: ${e.message}`);
  err.detail = e.detail;
  return err;
}

function say(id, message, kind) {
  const el = $(id);
  el.textContent = message;
  el.className = kind || "";
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

// Syntax highlighting for the shipped DSLs (and a sensible default for uploaded ones).
function highlight(code) {
  const re = /("(?:[^"\\\n]|\\.)*"?)|([A-Za-z_][\w]*\.[A-Za-z_]\w*)(?=\()|([A-Za-z_]\w*)(?=\s*:)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_]\w*)|([(),:=<>*.;+-])/g;
  let out = "", last = 0, m;
  while ((m = re.exec(code)) !== null) {
    out += escapeHtml(code.slice(last, m.index));
    const [text, str, op, key, num, word, punct] = m;
    const cls = str ? "str" : op ? "op" : key ? "key" : num ? "num" : word ? (KEYWORDS.test(word) ? "kw" : "") : punct ? "punct" : "";
    out += cls ? `<span class="tok-${cls}">${escapeHtml(text)}</span>` : escapeHtml(text);
    last = m.index + text.length;
  }
  return out + escapeHtml(code.slice(last));
}

// The code with the character at (line, column) marked and a caret line under it.
function markError(code, line, column) {
  const lines = code.split("\n");
  return lines.map((text, i) => {
    if (i + 1 !== line) return escapeHtml(text);
    const col = Math.max(1, column || 1) - 1;
    const here = text.slice(col, col + 1) || " ";
    const marked = escapeHtml(text.slice(0, col)) + `<span class="err-here" data-line="${line}" data-column="${col + 1}">${escapeHtml(here)}</span>` + escapeHtml(text.slice(col + 1));
    return marked + "\n" + `<span class="err-caret">${" ".repeat(col)}^ line ${line}, column ${col + 1}</span>`;
  }).join("\n");
}

async function loadLists(selected) {
  try {
    const dsls = await api("GET", "/dsls");
    $("dsl").innerHTML = dsls.map((d) => `<option value="${escapeHtml(d.name)}">${escapeHtml(d.name)}${d.origin === "upload" ? " (yours)" : ""}</option>`).join("");
    if (selected) $("dsl").value = selected;
    const adapters = await api("GET", "/adapters");
    $("adapter").innerHTML = '<option value="">automatic</option><option value="base">base model</option>' +
      adapters.filter((a) => a.available).map((a) => `<option value="${escapeHtml(a.name)}">${escapeHtml(a.name)} (${escapeHtml(a.dsl || "any")})</option>`).join("");
    say("status", "");
  } catch (err) {
    say("status", err.message, "error");
  }
}

function requestBody(stream) {
  const body = { dsl: $("dsl").value, text: $("text").value, stream };
  if ($("tenant").value.trim()) body.tenant = $("tenant").value.trim();
  if ($("adapter").value) body.adapter = $("adapter").value;
  if ($("context").value.trim()) body.context = $("context").value.trim();
  if ($("examples").value !== "") body.examples = Number($("examples").value);
  const candidates = Number($("candidates").value || 1);
  if (candidates > 1) { body.candidates = candidates; body.return_candidates = true; }
  return body;
}

async function generate() {
  const button = $("generate");
  button.disabled = true;
  $("code").textContent = "";
  $("verdict").textContent = "";
  $("verdict").className = "badge";
  $("timings").textContent = "";
  $("tree").textContent = "";
  say("status", "generating…");
  try {
    const stream = $("stream").checked && Number($("candidates").value || 1) <= 1;
    const result = stream ? await generateStreaming() : await api("POST", "/generate", requestBody(false));
    showResult(result);
    say("status", "done", "ok");
  } catch (err) {
    say("status", err.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function generateStreaming() {
  const response = await fetch("/generate", { method: "POST", headers: headers(), body: JSON.stringify(requestBody(true)) });
  if (!response.ok) throw apiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", result = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = (chunk.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((chunk.match(/^data: (.*)$/m) || [])[1] || "null");
      if (event === "delta") { text += data.text; $("code").innerHTML = highlight(text); }
      else if (event === "result") result = data;
      else if (event === "error") throw apiError(200, data);
    }
  }
  if (!result) throw new Error("the stream ended without a result");
  return result;
}

async function showResult(result) {
  $("code").innerHTML = highlight(result.code);
  $("verdict").textContent = result.valid ? "valid" : `invalid (${result.finish_reason})`;
  $("verdict").className = "badge " + (result.valid ? "valid" : "invalid");
  $("confidence").textContent = `confidence ${result.confidence.toFixed(2)}${result.calibrated ? "" : " (raw)"}`;
  const list = $("candidates-list");
  list.textContent = "";
  for (const c of result.candidates || []) {
    const item = document.createElement("li");
    item.textContent = `${c.votes} vote${c.votes === 1 ? "" : "s"}${c.valid ? "" : " (invalid)"}: ${c.code}`;
    list.appendChild(item);
  }
  $("candidates-box").hidden = !(result.candidates && result.candidates.length);
  const t = result.timings;
  const ms = (s) => (s == null ? "–" : Math.round(s * 1000) + " ms");
  $("timings").textContent = `adapter ${result.adapter} · queue ${ms(t.queue)} · first token ${ms(t.ttft)} · total ${ms(t.total)} · ` +
    `${result.usage.prompt_tokens} prompt + ${result.usage.completion_tokens} completion tokens`;
  try {
    const checked = await api("POST", "/validate", { dsl: result.dsl, code: result.code, tenant: requestBody(false).tenant });
    $("tree").textContent = checked.tree || (checked.error ? checked.error.message : "");
  } catch (err) {
    $("tree").textContent = err.message;
  }
}

async function register() {
  const examples = $("g-examples").value.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const [text, code] = line.split("=>").map((s) => s.trim());
    return { text, code: (code || "").replace(/\\n/g, "\n") };
  });
  const name = $("g-name").value.trim();
  try {
    await api("POST", "/dsls", { name, grammar: $("g-text").value, start: $("g-start").value.trim() || "start", examples });
    say("g-status", `registered "${name}": generate with it on the left`, "ok");
    await loadLists(name);
    if (examples.length) $("text").value = examples[0].text;
  } catch (err) {
    const d = err.detail || {};
    const where = d.line ? ` (grammar line ${d.line}${d.column ? ", column " + d.column : ""})` : "";
    say("g-status", err.message + where, "error");
  }
}

async function validate() {
  const code = $("v-code").value;
  try {
    const result = await api("POST", "/validate", { dsl: $("dsl").value, code, tenant: requestBody(false).tenant });
    if (result.valid) {
      $("v-marked").innerHTML = highlight(code);
      say("v-status", "valid", "ok");
    } else {
      const e = result.error;
      $("v-marked").innerHTML = markError(code, e.line, e.column);
      const expected = e.expected && e.expected.length ? `; expected ${e.expected.slice(0, 6).join(", ")}` : "";
      say("v-status", `invalid at line ${e.line}, column ${e.column}: ${e.message}${expected}`, "error");
    }
  } catch (err) {
    say("v-status", err.message, "error");
  }
}

$("generate").addEventListener("click", generate);
$("register").addEventListener("click", register);
$("validate").addEventListener("click", validate);
$("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
loadLists();

// Onboarding: POST /onboarding, then follow GET /onboarding/{id} until the run ends; the report, then try it.
const STAGES = ["dataset", "register", "baseline", "train", "publish candidate", "evaluate",
  "evaluate candidates", "evaluate without grammar", "publish"];
let run = null;

for (const [input, area] of [["o-grammar-file", "o-grammar"], ["o-pairs-file", "o-pairs"]]) {
  $(input).addEventListener("change", async () => {
    const file = $(input).files[0];
    if (file) $(area).value = await file.text();
    if (input === "o-grammar-file" && file && !$("o-name").value) $("o-name").value = file.name.replace(/\.[^.]*$/, "").toLowerCase();
  });
}

async function startOnboarding() {
  const body = {
    name: $("o-name").value.trim(), grammar: $("o-grammar").value, pairs: $("o-pairs").value,
  };
  // An emptied field is left out: the service's default applies (service/onboarding/options.py).
  if ($("o-start").value.trim()) body.start = $("o-start").value.trim();
  if ($("o-budget").value !== "") body.budget_s = Number($("o-budget").value) * 60;
  for (const [field, id] of [["heldout", "o-heldout"], ["margin", "o-margin"], ["alpha", "o-alpha"], ["max_tokens", "o-max-tokens"]]) {
    if ($(id).value !== "") body[field] = Number($(id).value);
  }
  if ($("o-steps").value !== "") body.steps = Number($("o-steps").value);
  if ($("tenant").value.trim()) body.tenant = $("tenant").value.trim();
  $("o-try").hidden = true;
  $("o-verdict").textContent = "";
  $("o-report").textContent = "";
  $("o-chart").removeAttribute("src");
  try {
    const status = await api("POST", "/onboarding", body);
    run = status.id;
    $("o-start-run").disabled = true;
    $("o-stop").disabled = false;
    showOnboarding(status);
    followOnboarding(run);
  } catch (err) {
    say("o-status", err.message, "error");
  }
}

async function followOnboarding(id) {
  while (run === id) {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    let status;
    try {
      status = await api("GET", "/onboarding/" + id);
    } catch (err) {
      say("o-status", err.message, "error");
      continue;
    }
    showOnboarding(status);
    if (status.state !== "running") {
      run = null;
      $("o-start-run").disabled = false;
      $("o-stop").disabled = true;
      await showReport(id, status);
    }
  }
}

function showOnboarding(status) {
  const done = new Map((status.stages || []).map(([name, seconds]) => [name, seconds]));
  $("o-stages").innerHTML = STAGES.map((name) => {
    const state = done.has(name) ? "done" : status.stage === name ? "running" : "pending";
    const note = state === "done" ? ` (${Math.round(done.get(name))} s)` : state === "running" ? " …" : "";
    return `<li class="${state}" data-stage="${escapeHtml(name)}">${escapeHtml(name)}${note}</li>`;
  }).join("");
  const p = status.progress;
  if (p && p.total) {
    const trained = done.has("train") || status.state !== "running";  // early stops end before the plan
    $("o-progress").max = p.total;
    $("o-progress").value = trained ? p.total : p.step;
    const last = (p.curve || []).slice(-1)[0];
    $("o-score").textContent = (trained ? `training finished at step ${p.step} of ${p.total} planned`
      : `step ${p.step} of ${p.total}`) + (last ? ` · held-out score ${last[1].toFixed(3)} at step ${last[0]}` : "");
  }
  const rows = (status.report && status.report.rows) || [];
  $("o-scores").querySelector("tbody").innerHTML = rows.map(({ config, summary }) =>
    `<tr><td>${escapeHtml(config.label)}</td><td>${config.constrained ? "yes" : "no"}</td><td>${summary.n}</td>` +
    `<td>${summary.exact_match.toFixed(3)}</td><td>${summary.exact_match_ci.map((x) => x.toFixed(2)).join("–")}</td>` +
    `<td>${summary.valid_rate.toFixed(3)}</td><td>${summary.grammar_violation_rate.toFixed(3)}</td></tr>`).join("");
  const left = status.budget_left_s != null ? ` · ~${Math.max(0, Math.round(status.budget_left_s))} s of the budget left` : "";
  const state = status.state === "running" ? `running: ${status.stage || "starting"}${left}` : status.state;
  say("o-status", `run ${status.id} · ${state}` + (status.error ? ` · ${status.error}` : ""),
      status.state === "failed" ? "error" : status.state === "published" ? "ok" : "");
  $("o-log").textContent = (status.log || []).join("\n");
}

async function showReport(id, status) {
  const verdict = status.report && status.report.verdict;
  $("o-verdict").textContent = verdict ? `${status.state}: ${verdict}` : status.error || status.state;
  $("o-verdict").className = status.state === "published" ? "ok" : "error";
  try {
    const md = await fetch(`/onboarding/${id}/report.md`, { headers: headers() });
    if (md.ok) $("o-report").textContent = await md.text();
    const png = await fetch(`/onboarding/${id}/report.png`, { headers: headers() });
    if (png.ok) $("o-chart").src = URL.createObjectURL(await png.blob());
    $("o-report-box").open = md.ok;
  } catch (err) {
    say("o-status", err.message, "error");
  }
  if (status.state === "published") {
    await loadLists(status.name);
    $("o-try").hidden = false;
  }
}

function tryAdapter() {
  const name = $("o-name").value.trim();
  $("dsl").value = name;
  $("adapter").value = name;
  const first = $("o-pairs").value.split("\n").find((line) => line.trim());
  try { $("text").value = JSON.parse(first).text; } catch (err) { /* keep the request box as it is */ }
  $("context").value = "";
  $("generate-title").scrollIntoView();
  generate();
}

async function stopOnboarding() {
  const id = run;
  if (!id) return;
  try {
    await api("DELETE", "/onboarding/" + id);
  } catch (err) {
    say("o-status", err.message, "error");
  }
}

$("o-start-run").addEventListener("click", startOnboarding);
$("o-stop").addEventListener("click", stopOnboarding);
$("o-try").addEventListener("click", tryAdapter);
