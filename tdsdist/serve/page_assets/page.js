/* tdsdist serve page: ask the served pair, watch the answer arrive token by token, click a token
   for both models' top-k. Vanilla JavaScript, no library; it talks only to the server it came
   from. Text from models and users reaches the page only as text (textContent, text nodes,
   attribute values), never as markup. */
(function () {
  "use strict";
  var clear = tdsBase.clear, isNum = tdsBase.isNum, prob = tdsBase.prob, visible = tdsBase.visible;

  var CATS = ["unshifted", "marginal", "shifted"];
  var DIVERGENCES = ["kl_aligned_base", "kl_base_aligned", "js", "tv"];
  var DIV_LABELS = {
    kl_aligned_base: "KL(aligned \u2016 base)",
    kl_base_aligned: "KL(base \u2016 aligned)",
    js: "Jensen-Shannon",
    tv: "total variation"
  };
  var CAT_RULES = { unshifted: "base rank 1", marginal: "base rank 2\u20133", shifted: "base rank > 3" };
  var HOT = [213, 94, 0]; // Okabe-Ito vermillion, the report's "shifted"
  var KEY_STORE = "tdsdist-api-key";

  var state = { positions: [], spans: [], current: null, texts: new Map(), controller: null, busy: false };

  // ---- DOM helpers: text only ----
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    });
    (Array.isArray(children) ? children : [children]).forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  function $(id) { return document.getElementById(id); }

  // ---- numbers ----
  function sig(x) {
    if (!isNum(x)) return "\u2013";
    if (!isFinite(x)) return x > 0 ? "\u221e" : "\u2212\u221e";
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 0.001 && a < 1e5) return String(Number(x.toPrecision(4)));
    return x.toExponential(3);
  }
  function pct(x) { return isNum(x) ? (100 * x).toFixed(1) + "%" : "\u2013"; }

  /** The server writes an infinite KL as `Infinity` (as `show --json` does), which JSON.parse
      refuses: outside strings, Infinity becomes 1e999 (parsed as Infinity) and NaN null. */
  function parseJSON(text) {
    var out = "", i = 0, inString = false;
    while (i < text.length) {
      var c = text[i];
      if (inString) {
        out += c;
        if (c === "\\") { out += text[i + 1]; i += 2; continue; }
        if (c === '"') inString = false;
        i += 1;
      } else if (c === '"') {
        inString = true; out += c; i += 1;
      } else if (text.startsWith("Infinity", i)) {
        out += "1e999"; i += 8;
      } else if (text.startsWith("NaN", i)) {
        out += "null"; i += 3;
      } else {
        out += c; i += 1;
      }
    }
    return JSON.parse(out);
  }


  // ---- the server ----
  function headers() {
    var h = { "Content-Type": "application/json" };
    var key = $("api-key").value;
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }
  async function failure(response) {
    var message = response.statusText;
    try { message = parseJSON(await response.text()).error || message; } catch (e) { /* not JSON */ }
    return "HTTP " + response.status + ": " + message;
  }
  async function post(path, body, signal) {
    var response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: signal });
    if (!response.ok) throw new Error(await failure(response));
    return response;
  }
  /** The texts of token ids (POST /v1/tokens), cached for the page's life. */
  async function tokenTexts(ids) {
    var missing = ids.filter(function (id) { return !state.texts.has(id); });
    missing = missing.filter(function (id, k) { return missing.indexOf(id) === k; });
    if (missing.length) {
      var body = parseJSON(await (await post("/v1/tokens", { ids: missing })).text());
      missing.forEach(function (id, k) { state.texts.set(id, body.tokens[k]); });
    }
    return ids.map(function (id) { return state.texts.get(id); });
  }

  // ---- status ----
  function status(text, isError) {
    var s = $("status");
    s.textContent = text;
    s.className = isError ? "status error" : "status";
  }

  // ---- the answer ----
  function fillToken(span, text) {
    if (typeof text !== "string" || text === "") {
      span.appendChild(el("span", { class: "ws", text: "\u2205" }));
      return;
    }
    text.split("\n").forEach(function (part, k) {
      if (k > 0) {
        span.appendChild(el("span", { class: "ws", text: "\u21b5" }));
        span.appendChild(document.createTextNode("\n"));
      }
      if (part) span.appendChild(document.createTextNode(part));
    });
  }

  function colorBy() { return $("color-by").value; }

  function heatMax(name) {
    var m = 0;
    state.positions.forEach(function (p) {
      var v = p.divergence[name];
      if (isNum(v) && isFinite(v) && v > m) m = v;
    });
    return m;
  }

  function paint(span, p, name, max) {
    if (name === "category") {
      span.className = "tok " + p.category;
      span.style.backgroundColor = "";
      span.title = p.category + " (" + CAT_RULES[p.category] + ")";
    } else {
      var v = p.divergence[name];
      var f = !isFinite(v) ? 1 : max > 0 ? Math.min(1, v / max) : 0;
      var rgb = HOT.map(function (c) { return Math.round(255 + f * (c - 255)); });
      span.className = "tok heat";
      span.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
      span.title = DIV_LABELS[name] + " " + sig(v);
    }
    if (state.current === Number(span.dataset.t)) span.classList.add("sel");
  }

  function repaint() {
    var name = colorBy(), max = name === "category" ? 0 : heatMax(name);
    state.positions.forEach(function (p, t) { paint(state.spans[t], p, name, max); });
    legend(max);
  }

  function addPosition(p) {
    var t = state.positions.length;
    state.positions.push(p);
    var span = el("span", { "data-t": t, "data-token-id": p.token_id });
    fillToken(span, p.token);
    span.addEventListener("click", function () { select(t); });
    state.spans.push(span);
    $("answer").appendChild(span);
  }

  function reset() {
    state.positions = [];
    state.spans = [];
    state.current = null;
    clear($("answer"));
    clear($("panel")).appendChild(el("p", { class: "muted", text: "No token selected." }));
    summary();
  }

  // ---- summary ----
  function summary() {
    var ps = state.positions, n = ps.length;
    var rows = [["tokens", String(n)]];
    CATS.forEach(function (c) {
      var k = ps.filter(function (p) { return p.category === c; }).length;
      rows.push([c, n ? pct(k / n) : "\u2013"]);
    });
    DIVERGENCES.forEach(function (name) {
      var sum = 0;
      ps.forEach(function (p) { sum += p.divergence[name]; });
      rows.push(["mean " + DIV_LABELS[name], n ? sig(sum / n) : "\u2013"]);
    });
    var dl = clear($("summary"));
    rows.forEach(function (r) {
      dl.appendChild(el("div", {}, [el("dt", { text: r[0] }), el("dd", { text: r[1] })]));
    });
  }

  function legend(max) {
    var box = clear($("legend"));
    var name = colorBy();
    if (name === "category") {
      CATS.forEach(function (c) {
        box.appendChild(el("span", {}, [el("span", { class: "tok " + c, text: "token" }), " ", el("strong", { text: c }), " \u2013 " + CAT_RULES[c]]));
      });
    } else {
      box.appendChild(el("span", {}, [DIV_LABELS[name] + ": 0 ", el("span", { class: "heatbar", role: "img", "aria-label": "white to vermillion" }), " " + sig(max) + " (the answer's largest)"]));
    }
  }

  // ---- the panel ----
  function metric(label, value) {
    return el("div", {}, [el("dt", { text: label }), el("dd", { text: value })]);
  }

  function topTable(title, cls, ids, logprobs, texts, p, model) {
    var body = ids.map(function (id, k) {
      var isAnswer = id === p.token_id;
      return el("tr", { class: isAnswer ? "answer-row" : null }, [
        el("td", { class: "num", text: String(k + 1) }),
        el("td", {}, [el("code", { class: "tokentext", text: visible(texts[k]) }), isAnswer ? el("span", { class: "marker", text: " \u25c0 answer" }) : null]),
        el("td", { class: "num", text: prob(logprobs[k]) })
      ]);
    });
    var foot = ids.indexOf(p.token_id) >= 0 ? null : el("tfoot", {}, el("tr", { class: "answer-row" }, [
      el("td", { class: "num", text: String(p[model].rank) }),
      el("td", {}, [el("code", { class: "tokentext", text: visible(p.token) }), el("span", { class: "marker", text: " \u25c0 answer" })]),
      el("td", { class: "num", text: prob(p[model].logprob) })
    ]));
    return el("table", { class: "top " + cls }, [
      el("caption", { text: title + " top-" + ids.length }),
      el("thead", {}, el("tr", {}, [el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: "token" }), el("th", { scope: "col", text: "p" })])),
      el("tbody", {}, body),
      foot
    ]);
  }

  async function select(t) {
    if (t < 0 || t >= state.positions.length) return;
    if (state.current !== null && state.spans[state.current]) state.spans[state.current].classList.remove("sel");
    state.current = t;
    var span = state.spans[t];
    span.classList.add("sel");
    var p = state.positions[t], d = p.divergence, a = p.aligned, b = p.base;
    var panel = clear($("panel"));
    panel.appendChild(el("h2", {}, ["Token " + (t + 1) + " of " + state.positions.length + ": ", el("code", { text: visible(p.token) }), el("span", { class: "muted", text: " id " + p.token_id })]));
    panel.appendChild(el("dl", { class: "metrics" }, [
      metric("category", p.category + " (" + CAT_RULES[p.category] + ")"),
      metric("base rank", String(b.rank)),
      metric("aligned rank", String(a.rank)),
      metric("ties base / aligned", String(b.ties) + " / " + String(a.ties)),
      metric("base p (logprob)", prob(b.logprob) + " (" + sig(b.logprob) + ")"),
      metric("aligned p (logprob)", prob(a.logprob) + " (" + sig(a.logprob) + ")"),
      metric(DIV_LABELS.kl_aligned_base, sig(d.kl_aligned_base)),
      metric(DIV_LABELS.kl_base_aligned, sig(d.kl_base_aligned)),
      metric(DIV_LABELS.js, sig(d.js)),
      metric(DIV_LABELS.tv, sig(d.tv)),
      metric("KL over the aligned top-k", sig(p.kl)),
      metric("base top-1: aligned rank", p.base_top1 && p.base_top1.aligned_rank !== null ? String(p.base_top1.aligned_rank) : "\u2013")
    ]));
    var tops = el("div", { class: "tops" }, el("p", { class: "muted", text: "Loading the top-k tokens\u2026" }));
    panel.appendChild(tops);
    try {
      var texts = await tokenTexts(b.top_ids.concat(a.top_ids));
      if (state.current !== t) return;
      clear(tops);
      tops.appendChild(topTable("Base", "base", b.top_ids, b.top_logprobs, texts.slice(0, b.top_ids.length), p, "base"));
      tops.appendChild(topTable("Aligned", "aligned", a.top_ids, a.top_logprobs, texts.slice(b.top_ids.length), p, "aligned"));
    } catch (e) {
      clear(tops).appendChild(el("p", { class: "status error", text: "Top-k tokens: " + e.message }));
    }
  }

  function onAnswerKey(event) {
    var n = state.positions.length;
    if (!n) return;
    var t = state.current === null ? -1 : state.current;
    var next = { ArrowRight: t + 1, ArrowLeft: t - 1, Home: 0, End: n - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    select(Math.max(0, Math.min(n - 1, next)));
    state.spans[state.current].scrollIntoView({ block: "nearest" });
  }

  // ---- requests ----
  function mode() { return document.querySelector("input[name=mode]:checked").value; }

  function setBusy(busy) {
    state.busy = busy;
    $("submit").disabled = busy;
    $("stop").disabled = !busy || mode() !== "generate";
  }

  function number(id) {
    var v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  }

  /** One SSE stream read with fetch + ReadableStream (EventSource cannot POST): each event's
      `data:` line is one JSON object; a token's has `t`, the last `done` (or `error`). */
  async function generate(instruction) {
    var body = { instruction: instruction, stream: true, max_new_tokens: number("max-new-tokens"), temperature: number("temperature"), seed: number("seed") };
    state.controller = new AbortController();
    var response = await post("/v1/generate", body, state.controller.signal);
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    status("Generating\u2026");
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var events = buffer.split("\n\n");
      buffer = events.pop();
      for (var k = 0; k < events.length; k++) {
        var data = events[k].split("\n").filter(function (l) { return l.startsWith("data: "); }).map(function (l) { return l.slice(6); }).join("\n");
        if (!data) continue;
        var event = parseJSON(data);
        if (event.error) throw new Error(event.error);
        if (event.done) {
          status("Done: " + event.token_ids.length + " tokens (" + event.finish_reason + ").");
          return;
        }
        addPosition(event);
        if (colorBy() === "category") paint(state.spans[event.t], event, "category", 0);
        else repaint(); // a new largest value rescales the heat of every token
        summary();
        status("Generating\u2026 " + state.positions.length + " tokens");
      }
    }
    throw new Error("the stream ended before its last event");
  }

  async function score(instruction, answer) {
    status("Scoring\u2026");
    var body = parseJSON(await (await post("/v1/score", { instruction: instruction, answer: answer })).text());
    body.positions.forEach(addPosition);
    status("Scored: " + body.positions.length + " tokens.");
  }

  async function submit(event) {
    event.preventDefault();
    if (state.busy) return;
    var instruction = $("instruction").value;
    if (!instruction.trim()) { status("Type an instruction first.", true); $("instruction").focus(); return; }
    reset();
    setBusy(true);
    try {
      if (mode() === "generate") await generate(instruction);
      else await score(instruction, $("answer-input").value);
    } catch (e) {
      if (e.name === "AbortError") status("Stopped after " + state.positions.length + " tokens.");
      else status(e.message, true);
    } finally {
      state.controller = null;
      setBusy(false);
      repaint();
      summary();
    }
  }

  function onMode() {
    var generating = mode() === "generate";
    $("answer-field").hidden = generating;
    $("generate-options").hidden = !generating;
    $("submit").textContent = generating ? "Generate" : "Score";
  }

  function init() {
    var key = $("api-key");
    try { key.value = sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { /* storage off */ }
    key.addEventListener("input", function () {
      try { sessionStorage.setItem(KEY_STORE, key.value); } catch (e) { /* storage off */ }
    });
    document.querySelectorAll("input[name=mode]").forEach(function (r) { r.addEventListener("change", onMode); });
    $("request").addEventListener("submit", submit);
    $("stop").addEventListener("click", function () { if (state.controller) state.controller.abort(); });
    $("color-by").addEventListener("change", repaint);
    $("answer").addEventListener("keydown", onAnswerKey);
    onMode();
    summary();
    legend(0);
  }

  init();
})();
