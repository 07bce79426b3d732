/* tdsdist report: the code of index.html and example.html. Vanilla JavaScript, no library,
   nothing fetched from the network. Data arrives as calls tdsReport.index({...}) (data/index.js)
   and tdsReport.example(N, {...}) (data/ex-N.js, inserted as a <script> by example.html?ex=N,
   because browsers refuse to read file:// URLs by request). Data reaches the page only as text
   (textContent, text nodes, attribute values), never as markup. */
(function () {
  "use strict";
  var clear = tdsBase.clear, isNum = tdsBase.isNum, prob = tdsBase.prob, visible = tdsBase.visible;

  var SVG_NS = "http://www.w3.org/2000/svg"; // an XML namespace name, not a network address
  var CATS = ["unshifted", "marginal", "shifted"];
  var COLORS = {
    unshifted: "#56B4E9", // Okabe-Ito sky blue
    marginal: "#F0E442", // Okabe-Ito yellow
    shifted: "#D55E00", // Okabe-Ito vermillion
    line: "#0072B2", // Okabe-Ito blue
    grid: "#d9d9d9",
    ink: "#1a1a1a",
    muted: "#595959"
  };

  // ---------------------------------------------------------------------------------------
  // DOM helpers: text only.
  // ---------------------------------------------------------------------------------------

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    });
  }

  function append(node, children) {
    if (children === null || children === undefined) return node;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      if (typeof c === "string" || typeof c === "number") c = document.createTextNode(String(c));
      node.appendChild(c);
    });
    return node;
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return append(node, children);
  }


  function show(nodes) {
    var app = clear(document.getElementById("app"));
    append(app, nodes);
  }

  function fail(message) {
    show([
      el("p", { class: "status error", role: "alert", text: message }),
      el("p", {}, [el("a", { href: "index.html", text: "Back to the report" })])
    ]);
  }

  // ---------------------------------------------------------------------------------------
  // Formatting.
  // ---------------------------------------------------------------------------------------


  function inf(x) {
    return x > 0 ? "\u221e" : "\u2212\u221e";
  }

  function pct(x, digits) {
    if (!isNum(x)) return "\u2013";
    if (!isFinite(x)) return inf(x);
    return (100 * x).toFixed(digits === undefined ? 1 : digits) + "%";
  }

  function fixed(x, digits) {
    if (!isNum(x)) return "\u2013";
    if (!isFinite(x)) return inf(x);
    return x.toFixed(digits);
  }

  function sig(x) {
    if (!isNum(x)) return "\u2013";
    if (!isFinite(x)) return inf(x);
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 0.001 && a < 1e5) return String(Number(x.toPrecision(3)));
    return x.toExponential(2);
  }


  function count(n) {
    return isNum(n) ? n.toLocaleString("en-US") : "\u2013";
  }


  function shorten(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "\u2026" : s;
  }

  function categoryRule(th, cat) {
    var u = th ? th.unshifted_max : 1;
    var m = th ? th.marginal_max : 3;
    if (cat === "unshifted") return u === 1 ? "base rank 1" : "base rank 1\u2013" + u;
    if (cat === "marginal") return "base rank " + (u + 1) + (m > u + 1 ? "\u2013" + m : "");
    return "base rank > " + m;
  }

  // ---------------------------------------------------------------------------------------
  // Charts: small inline SVG, drawn here (no chart library).
  // ---------------------------------------------------------------------------------------

  function niceMax(x) {
    if (!isNum(x) || x <= 0 || !isFinite(x)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= x - 1e-12) return steps[i] * p;
    return 10 * p;
  }

  function frame(title, desc, width, height) {
    var node = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      class: "chart",
      role: "img",
      "aria-label": title + ". " + desc
    });
    append(node, [svg("title", { text: title }), svg("desc", { text: desc })]);
    return node;
  }

  /** Gridlines and labels at fifths of yMax (a niceMax: steps of 1, 2 or 5 units). */
  function yAxis(node, box, yMax, label) {
    var step = (100 * yMax) / 5;
    var digits = step >= 1 ? 0 : Math.ceil(-Math.log10(step) - 1e-9);
    for (var k = 0; k <= 5; k++) {
      var v = (yMax * k) / 5;
      var y = box.bottom - ((box.bottom - box.top) * k) / 5;
      append(node, [
        svg("line", { x1: box.left, x2: box.right, y1: y, y2: y, stroke: COLORS.grid }),
        svg("text", { x: box.left - 6, y: y + 4, "text-anchor": "end", class: "tick", text: pct(v, digits) })
      ]);
    }
    if (label) {
      append(node, svg("text", {
        x: 12,
        y: (box.top + box.bottom) / 2,
        transform: "rotate(-90 12 " + (box.top + box.bottom) / 2 + ")",
        "text-anchor": "middle",
        class: "axis",
        text: label
      }));
    }
  }

  function xLabels(node, box, labels, center, xLabel) {
    labels.forEach(function (label, i) {
      append(node, svg("text", {
        x: center(i),
        y: box.bottom + 16,
        "text-anchor": "middle",
        class: "tick",
        text: label
      }));
    });
    if (xLabel) {
      append(node, svg("text", {
        x: (box.left + box.right) / 2,
        y: box.bottom + 36,
        "text-anchor": "middle",
        class: "axis",
        text: xLabel
      }));
    }
  }

  /** Vertical bars: opts {title, desc, labels, values, colors, tips, xLabel, yLabel}. */
  function barChart(opts) {
    var W = 520, H = 250;
    var box = { left: 52, right: W - 10, top: 18, bottom: H - 46 };
    var node = frame(opts.title, opts.desc, W, H);
    var yMax = niceMax(Math.max.apply(null, opts.values.concat(opts.highs || []).filter(isNum).concat([0])));
    yAxis(node, box, yMax, opts.yLabel);
    var band = (box.right - box.left) / opts.values.length;
    function center(i) { return box.left + band * (i + 0.5); }
    opts.values.forEach(function (v, i) {
      if (!isNum(v)) return;
      var h = ((box.bottom - box.top) * v) / yMax;
      var bar = svg("rect", {
        x: center(i) - band * 0.35,
        y: box.bottom - h,
        width: band * 0.7,
        height: Math.max(h, 0),
        fill: opts.colors[i],
        stroke: COLORS.ink,
        "stroke-width": 0.5
      });
      append(bar, svg("title", { text: opts.tips[i] }));
      append(node, [
        bar,
        svg("text", { x: center(i), y: box.bottom - h - 4, "text-anchor": "middle", class: "value", text: pct(v) })
      ]);
    });
    xLabels(node, box, opts.labels, center, opts.xLabel);
    return node;
  }

  /** Points joined by a line (gaps where a value is missing): same opts as barChart. */
  function lineChart(opts) {
    var W = 520, H = 250;
    var box = { left: 52, right: W - 14, top: 20, bottom: H - 46 };
    var node = frame(opts.title, opts.desc, W, H);
    var yMax = niceMax(Math.max.apply(null, opts.values.concat(opts.highs || []).filter(isNum).concat([0])));
    yAxis(node, box, yMax, opts.yLabel);
    var band = (box.right - box.left) / opts.values.length;
    function center(i) { return box.left + band * (i + 0.5); }
    function y(v) { return box.bottom - ((box.bottom - box.top) * v) / yMax; }
    var d = "";
    var pen = false;
    opts.values.forEach(function (v, i) {
      if (!isNum(v)) { pen = false; return; }
      d += (pen ? " L" : " M") + center(i).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    });
    (opts.lows || []).forEach(function (lo, i) { // 95% intervals: a whisker per point
      var hi = (opts.highs || [])[i];
      if (!isNum(lo) || !isNum(hi) || !isNum(opts.values[i])) return;
      var x = center(i);
      append(node, svg("path", {
        class: "ci",
        d: "M" + (x - 4) + " " + y(lo).toFixed(1) + " H" + (x + 4) + " M" + x + " " + y(lo).toFixed(1) + " V" + y(hi).toFixed(1) + " M" + (x - 4) + " " + y(hi).toFixed(1) + " H" + (x + 4),
        fill: "none", stroke: COLORS.ink, "stroke-width": 1.2
      }));
    });
    if (d) append(node, svg("path", { d: d.trim(), fill: "none", stroke: COLORS.shifted, "stroke-width": 2.5 }));
    opts.values.forEach(function (v, i) {
      if (!isNum(v)) return;
      var dot = svg("circle", { cx: center(i), cy: y(v), r: 4.5, fill: COLORS.shifted, stroke: COLORS.ink, "stroke-width": 1 });
      append(dot, svg("title", { text: opts.tips[i] }));
      append(node, [dot, svg("text", { x: center(i), y: y(v) - 9, "text-anchor": "middle", class: "value", text: pct(v, 0) })]);
    });
    xLabels(node, box, opts.labels, center, opts.xLabel);
    return node;
  }

  /** Horizontal bars with a text label per row (tokens): opts {title, desc, rows: [{label, value, note}], color}. */
  function hbarChart(opts) {
    var rowH = 22, W = 520, labelW = 130, noteW = 120;
    var H = 16 + rowH * opts.rows.length + 8;
    var node = frame(opts.title, opts.desc, W, H);
    var left = labelW, right = W - noteW;
    opts.rows.forEach(function (r, i) {
      var y = 12 + rowH * i;
      var w = (right - left) * (isNum(r.value) ? Math.min(Math.max(r.value, 0), 1) : 0);
      var bar = svg("rect", { x: left, y: y, width: w, height: rowH - 6, fill: opts.color, stroke: COLORS.ink, "stroke-width": 0.5 });
      append(bar, svg("title", { text: r.tip }));
      append(node, [
        svg("text", { x: left - 6, y: y + rowH / 2 + 1, "text-anchor": "end", class: "token-label", text: shorten(r.label, 16) }),
        svg("rect", { x: left, y: y, width: right - left, height: rowH - 6, fill: "#f3f3f3" }),
        bar,
        svg("text", { x: right + 6, y: y + rowH / 2 + 1, class: "tick", text: r.note })
      ]);
    });
    return node;
  }

  function categoryBar(categories, th) {
    var W = 520, H = 46;
    var node = frame(
      "Answer tokens by category",
      CATS.map(function (c) { return c + " " + pct((categories[c] || {}).fraction); }).join(", "),
      W,
      H
    );
    var x = 0;
    CATS.forEach(function (c) {
      var f = (categories[c] || {}).fraction;
      if (!isNum(f) || f <= 0) return;
      var w = W * f;
      var seg = svg("rect", { x: x, y: 4, width: w, height: 38, fill: COLORS[c], stroke: "#ffffff", "stroke-width": 1 });
      append(seg, svg("title", { text: c + " (" + categoryRule(th, c) + "): " + pct(f) }));
      append(node, seg);
      if (w > 48) {
        append(node, svg("text", { x: x + w / 2, y: 28, "text-anchor": "middle", class: "seg", text: pct(f) }));
      }
      x += w;
    });
    return node;
  }

  // ---------------------------------------------------------------------------------------
  // index.html
  // ---------------------------------------------------------------------------------------

  function configLine(cfg, store) {
    cfg = cfg || {};
    var parts = [];
    var adapter = cfg.aligned_adapter && cfg.aligned_adapter.path;
    if (adapter) parts.push(["aligned", (cfg.aligned || cfg.base) + " + adapter " + adapter + (cfg.aligned_template ? " (template " + cfg.aligned_template + ")" : "")]);
    else if (cfg.aligned) parts.push(["aligned", cfg.aligned + (cfg.aligned_template ? " (template " + cfg.aligned_template + ")" : "")]);
    if (cfg.base) parts.push(["base", cfg.base + (cfg.base_template ? " (template " + cfg.base_template + ")" : "")]);
    if (isNum(cfg.top_k)) parts.push(["top-k stored", String(cfg.top_k)]);
    if (store && store.name) parts.push(["store", store.name]);
    return el("dl", { class: "config" }, parts.map(function (p) {
      return el("div", {}, [el("dt", { text: p[0] }), el("dd", { text: p[1] })]);
    }));
  }

  function legend(th, counts) {
    return el("ul", { class: "legend", "aria-label": "Categories" }, CATS.map(function (c) {
      var item = [el("span", { class: "tok " + c, "aria-hidden": "true", text: "token" }), " ", el("strong", { text: c }), " \u2013 " + categoryRule(th, c)];
      if (counts && counts[c]) item.push(": " + pct(counts[c].fraction) + " (" + count(counts[c].count) + ")");
      return el("li", {}, item);
    }));
  }

  /** "mean [low, high]" of a summary entry {mean, ci} (95% interval over examples). */
  function withCi(d, format) {
    d = d || {};
    format = format || sig;
    var ci = d.ci || [];
    return format(d.mean) + (isNum(ci[0]) ? " [" + format(ci[0]) + ", " + format(ci[1]) + "]" : "");
  }

  var DIVERGENCE_LABELS = [
    ["kl_aligned_base", "KL(aligned \u2016 base), exact"],
    ["kl_base_aligned", "KL(base \u2016 aligned), exact"],
    ["js", "Jensen-Shannon, exact"],
    ["tv", "total variation, exact"]
  ];

  function keyNumbers(s) {
    var kl = s.kl || {};
    var bp = s.base_prob || {};
    var dv = s.divergence || {};
    var m = s.measures || {};
    var rows = [
      ["examples scored", count(s.examples)],
      ["answer positions", count(s.positions)],
      ["aligned model's own top-1", pct(s.aligned_top1_fraction)],
      ["base probability of the answer token", "mean " + pct(bp.mean) + ", median " + pct(bp.median)]
    ];
    var exact = DIVERGENCE_LABELS.filter(function (d) { return dv[d[0]]; });
    exact.forEach(function (d) { rows.push([d[1], "mean " + withCi(dv[d[0]]) + " (95% CI over examples)"]); });
    if (!exact.length) rows.push(["exact divergences", "not measured (a store of format 1)"]);
    if (m.aligned_branching) rows.push(["branching factor exp(entropy), aligned / base", withCi(m.aligned_branching) + " / " + withCi(m.base_branching)]);
    if (m.base_top1_prob) rows.push(["base model's top-1 probability", "mean " + withCi(m.base_top1_prob, pct)]);
    rows.push(["KL(aligned \u2016 base), top-k + tail lower bound", "mean " + sig(kl.mean) + ", median " + sig(kl.median) + ", p90 " + sig(kl.p90) + ", max " + sig(kl.max)]);
    if (s.pending_units) rows.push(["units pending (not counted)", count(s.pending_units)]);
    return el("dl", { class: "numbers" }, rows.map(function (r) {
      return el("div", {}, [el("dt", { text: r[0] }), el("dd", { text: r[1] })]);
    }));
  }

  function positionChart(rows, title, xLabel, unit) {
    rows = rows || [];
    function ci(r, i) { return (r.shifted_ci || [])[i]; }
    return lineChart({
      lows: rows.map(function (r) { return ci(r, 0); }),
      highs: rows.map(function (r) { return ci(r, 1); }),
      title: title,
      desc: rows.map(function (r) { return r.bucket + ": " + pct(r.shifted_fraction); }).join(", "),
      labels: rows.map(function (r) { return unit ? String(r.bucket).replace(unit, "") : r.bucket; }),
      values: rows.map(function (r) { return r.shifted_fraction; }),
      tips: rows.map(function (r) {
        var span = isNum(ci(r, 0)) ? " [" + pct(ci(r, 0)) + ", " + pct(ci(r, 1)) + "] 95% CI" : "";
        return r.bucket + ": " + pct(r.shifted_fraction) + span + " shifted of " + count(r.positions) + " positions, mean KL (top-k bound) " + sig(r.mean_kl) + ", mean base p " + pct(r.mean_base_prob);
      }),
      xLabel: xLabel,
      yLabel: "shifted fraction"
    });
  }

  function rankColor(bin, th) {
    var lo = parseInt(String(bin).replace(/[^0-9].*$/, ""), 10);
    if (String(bin).charAt(0) === ">") return COLORS.shifted;
    if (lo <= th.unshifted_max) return COLORS.unshifted;
    if (lo <= th.marginal_max) return COLORS.marginal;
    return COLORS.shifted;
  }

  /** A token's rate: `shifted_rate` (as summarize writes it), `shift_rate`, or the counts. */
  function rate(r, key) {
    var v = r[key + "_rate"];
    if (!isNum(v) && key === "shifted") v = r.shift_rate;
    if (!isNum(v) && isNum(r[key]) && r.count) v = r[key] / r.count;
    return v;
  }

  function tokenChart(rows, key, color, title) {
    rows = (rows || []).slice(0, 15);
    if (!rows.length) return el("p", { class: "muted", text: "No token was seen often enough." });
    return hbarChart({
      title: title,
      desc: rows.map(function (r) { return visible(r.token) + " " + pct(rate(r, key), 0); }).join(", "),
      color: color,
      rows: rows.map(function (r) {
        return {
          label: visible(r.token),
          value: rate(r, key),
          note: pct(rate(r, key), 0) + " (" + count(r[key]) + "/" + count(r.count) + ")",
          tip: visible(r.token) + " (id " + r.token_id + "): " + key + " " + count(r[key]) + " of " + count(r.count)
        };
      })
    });
  }

  var COLUMNS = [
    { key: "i", label: "#", type: "num", first: 1 },
    { key: "id", label: "id", type: "id", first: 1 },
    { key: "n", label: "tokens", type: "num", first: -1 },
    { key: "shifted", label: "shifted", type: "num", first: -1 },
    { key: "kl", label: "mean KL", type: "num", first: -1 },
    { key: "text", label: "answer begins", type: "text", first: 1 }
  ];

  function compare(a, b, col, dir) {
    if (a.pending !== b.pending) return a.pending ? 1 : -1; // pending rows stay last
    var x = a[col.key], y = b[col.key], r = 0;
    if (col.type === "num") {
      var xn = isNum(x), yn = isNum(y);
      if (xn && yn) r = x === y ? 0 : x < y ? -1 : 1;
      else if (xn !== yn) return xn ? -1 : 1; // missing values last
    } else {
      r = String(x).localeCompare(String(y), "en", { numeric: col.type === "id", sensitivity: "base" });
    }
    return r * dir || a.i - b.i;
  }

  function examplesTable(rows) {
    var sort = { col: COLUMNS[3], dir: -1 };
    var tbody = el("tbody");
    var headers = [];
    var pending = rows.filter(function (r) { return r.pending; }).length;
    var caption = el("caption", {}, [
      rows.length + " examples" + (pending ? " (" + pending + " pending: not scored yet, no page)" : "") + ". ",
      el("span", { class: "muted", text: "Sort by a column with its header button." })
    ]);
    var headRow = el("tr", {}, COLUMNS.map(function (col) {
      var arrow = el("span", { class: "arrow", "aria-hidden": "true" });
      var button = el("button", { type: "button", class: "sort", "data-key": col.key }, [col.label, arrow]);
      var th = el("th", { scope: "col", class: "col-" + col.key }, button);
      headers.push({ col: col, th: th, arrow: arrow });
      button.addEventListener("click", function () {
        sort = { col: col, dir: sort.col === col ? -sort.dir : col.first };
        render();
      });
      return th;
    }));

    function cell(row, col) {
      var v = row[col.key];
      if (col.key === "id") {
        if (row.pending) return el("td", {}, [String(v) + " ", el("span", { class: "badge", text: "pending" })]);
        return el("td", {}, el("a", { href: "example.html?ex=" + row.i, text: String(v) }));
      }
      if (col.key === "shifted") return el("td", { class: "num", text: row.pending ? "\u2013" : pct(v) });
      if (col.key === "kl") return el("td", { class: "num", text: row.pending ? "\u2013" : sig(v) });
      if (col.type === "num") return el("td", { class: "num", text: count(v) });
      return el("td", { class: "preview", text: String(v) });
    }

    function render() {
      headers.forEach(function (h) {
        var active = h.col === sort.col;
        if (active) h.th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
        else h.th.removeAttribute("aria-sort");
        h.arrow.textContent = active ? (sort.dir > 0 ? " \u25b2" : " \u25bc") : "";
      });
      var sorted = rows.slice().sort(function (a, b) { return compare(a, b, sort.col, sort.dir); });
      var frag = document.createDocumentFragment();
      sorted.forEach(function (row) {
        var tr = el("tr", { class: row.pending ? "pending" : "scored", "data-ex": row.i });
        COLUMNS.forEach(function (col) { tr.appendChild(cell(row, col)); });
        frag.appendChild(tr);
      });
      clear(tbody).appendChild(frag);
    }

    tbody.addEventListener("click", function (e) {
      var tr = e.target.closest("tr.scored");
      if (!tr || e.target.closest("a")) return;
      window.location.href = "example.html?ex=" + Number(tr.getAttribute("data-ex"));
    });
    render();
    return el("table", { class: "examples", id: "examples-table" }, [caption, el("thead", {}, headRow), tbody]);
  }

  /** The figures of `tdsdist figures` (SVG files under figures/; each says in its footnote what
      was filtered), one per card; only files of the site's own figures folder are shown. */
  function figuresSection(figures) {
    figures = (figures || []).filter(function (f) { return /^figures\/[a-z0-9_]+\.svg$/.test(String(f.src)); });
    if (!figures.length) return null;
    return el("section", { class: "cards figures", id: "figures", "aria-label": "Figures" }, figures.map(function (f) {
      return el("figure", { class: "card" }, [
        el("img", { src: f.src, alt: f.title + ". " + f.shows, width: Math.round(f.width_px / 3), height: Math.round(f.height_px / 3) }),
        el("figcaption", {}, [el("strong", { text: f.title + ". " }), f.shows])
      ]);
    }));
  }

  function renderIndex(data) {
    var s = data.summary || {};
    var store = data.store || {};
    COLUMNS.forEach(function (col) { // the exact KL where the store has it, else the bound
      if (col.key === "kl") col.label = store.exact_divergences ? "mean KL(aligned \u2016 base)" : "mean KL, top-k bound";
    });
    var th = data.thresholds || { unshifted_max: 1, marginal_max: 3 };
    var cats = s.categories || {};
    document.title = "Token distribution shift \u00b7 " + (store.name || "report");
    var ranks = s.rank_histogram || [];
    var nodes = [
      el("header", { class: "top" }, [
        el("h1", { text: "Token distribution shift" }),
        el("p", { class: "lede", text: "Each token of the aligned model's answer, ranked under the base model's next-token distribution given the same prefix." }),
        configLine(s.config || store.config, store),
        indexFiltersLine(data.filters, s.excluded)
      ]),
      el("section", { class: "cards", "aria-label": "Summary" }, [
        el("div", { class: "card", id: "categories" }, [el("h2", { text: "Categories" }), categoryBar(cats, th), legend(th, cats)]),
        el("div", { class: "card" }, [el("h2", { text: "Key numbers" }), keyNumbers(s)])
      ]),
      el("section", { class: "cards", "aria-label": "Shift along the answer" }, [
        el("div", { class: "card" }, [el("h2", { text: "Shift by position in the answer" }), positionChart(s.by_position_bucket, "Shifted fraction by token position", "position (tokens from the answer's start)")]),
        el("div", { class: "card" }, [el("h2", { text: "Shift by relative position" }), positionChart(s.by_relative_position, "Shifted fraction by relative position", "position (% of the answer's length)", "%")])
      ]),
      el("section", { class: "cards", "aria-label": "Ranks and tokens" }, [
        el("div", { class: "card" }, [
          el("h2", { text: "Base rank of the answer token" }),
          barChart({
            title: "Base rank histogram",
            desc: ranks.map(function (r) { return "rank " + r.bin + ": " + pct(r.fraction); }).join(", "),
            labels: ranks.map(function (r) { return r.bin; }),
            values: ranks.map(function (r) { return r.fraction; }),
            colors: ranks.map(function (r) { return rankColor(r.bin, th); }),
            tips: ranks.map(function (r) { return "rank " + r.bin + ": " + count(r.count) + " positions (" + pct(r.fraction) + ")"; }),
            xLabel: "base rank",
            yLabel: "share of positions"
          })
        ]),
        el("div", { class: "card" }, [el("h2", { text: "Most shifted tokens" }), tokenChart(s.top_shifted_tokens, "shifted", COLORS.shifted, "Tokens most often shifted")]),
        el("div", { class: "card" }, [el("h2", { text: "Most often unshifted tokens" }), tokenChart(s.top_unshifted_tokens, "unshifted", COLORS.unshifted, "Tokens most often unshifted")])
      ]),
      figuresSection(data.figures),
      el("section", { class: "table-section", id: "examples", "aria-label": "Examples" }, [
        el("h2", { text: "Examples" }),
        examplesTable(data.examples || [])
      ])
    ];
    show(nodes);
  }

  // ---------------------------------------------------------------------------------------
  // example.html?ex=N
  // ---------------------------------------------------------------------------------------

  var state = { wanted: null, data: null, spans: [], current: null };

  function fillToken(span, text) {
    if (typeof text !== "string" || text === "") {
      span.appendChild(el("span", { class: "ws", text: "\u2205" }));
      return;
    }
    var parts = text.split("\n");
    parts.forEach(function (part, k) {
      if (k > 0) {
        span.appendChild(el("span", { class: "ws", text: "\u21b5" }));
        span.appendChild(document.createTextNode("\n"));
      }
      if (part) span.appendChild(document.createTextNode(part));
    });
  }

  function exampleLink(target, label, rel) {
    if (!target) return el("span", { class: "navlink disabled", "aria-disabled": "true", text: label });
    return el("a", { class: "navlink", href: "example.html?ex=" + Number(target.i), rel: rel }, [label + " ", el("span", { class: "muted", text: "(id " + target.id + ")" })]);
  }

  function topTable(title, model, t, answerId, strings, cls) {
    var ids = model.top_ids[t] || [];
    var milli = model.top_logprobs_milli[t] || []; // log-probabilities in thousandths; null: -inf
    var body = ids.map(function (id, k) {
      var isAnswer = id === answerId;
      return el("tr", { class: isAnswer ? "answer" : null }, [
        el("td", { class: "num", text: String(k + 1) }),
        el("td", {}, [el("code", { class: "tokentext", text: visible(strings[id]) }), isAnswer ? el("span", { class: "marker", text: " \u25c0 answer" }) : null]),
        el("td", { class: "num", text: prob(milli[k] === null ? -Infinity : milli[k] / 1000) })
      ]);
    });
    var inList = ids.indexOf(answerId) >= 0;
    var foot = inList ? null : el("tfoot", {}, el("tr", { class: "answer" }, [
      el("td", { class: "num", text: String(model.rank[t]) }),
      el("td", {}, [el("code", { class: "tokentext", text: visible(strings[answerId]) }), el("span", { class: "marker", text: " \u25c0 answer" })]),
      el("td", { class: "num", text: prob(model.logprob[t]) })
    ]));
    return el("table", { class: "top " + cls }, [
      el("caption", { text: title + " top-" + ids.length }),
      el("thead", {}, el("tr", {}, [el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: "token" }), el("th", { scope: "col", text: "p" })])),
      el("tbody", {}, body),
      foot
    ]);
  }

  function renderPanel(t) {
    var d = state.data;
    var panel = clear(document.getElementById("panel"));
    var id = d.token[t];
    var cat = CATS[d.cat[t]];
    var start = t > 0 ? d.ends[t - 1] : 0;
    var end = d.ends[t];
    var prefix = el("div", { class: "prefix", tabindex: "0", "aria-label": "Answer text up to this token" }, [
      d.text.slice(0, start),
      el("mark", { text: d.text.slice(start, end) })
    ]);
    var metrics = [
      ["category", cat + " (" + categoryRule(d.thresholds, cat) + ")"],
      ["base rank", String(d.base.rank[t])],
      ["aligned rank", String(d.aligned.rank[t])],
      ["base p (logprob)", prob(d.base.logprob[t]) + " (" + fixed(d.base.logprob[t], 3) + ")"],
      ["aligned p (logprob)", prob(d.aligned.logprob[t]) + " (" + fixed(d.aligned.logprob[t], 3) + ")"],
      ["KL(aligned \u2016 base), top-k", sig(d.kl[t])],
      ["entropy base / aligned", fixed(d.base.entropy[t], 2) + " / " + fixed(d.aligned.entropy[t], 2) + " nats"]
    ];
    if (d.divergence) {
      var dv = d.divergence;
      metrics.push(
        ["KL(aligned \u2016 base), exact", sig(dv.kl_aligned_base[t])],
        ["KL(base \u2016 aligned), exact", sig(dv.kl_base_aligned[t])],
        ["Jensen-Shannon / total variation", sig(dv.js[t]) + " / " + sig(dv.tv[t])],
        ["ties base / aligned", String(d.base.ties[t]) + " / " + String(d.aligned.ties[t])]
      );
    }
    if (d.top1_differs) {
      metrics.push(["base top 1 vs aligned top 1", d.top1_differs[t] ? "differ" : "same"]);
    }
    if (d.filters && d.excluded) {
      metrics.push(["in the summary", d.excluded[t] ? "left out (" + exclusionReason(d, t) + ")" : "counted"]);
    }
    append(panel, [
      el("h2", { id: "panel-title" }, [
        "Token " + (t + 1) + " of " + d.n + ": ",
        el("code", { class: "tok " + cat, id: "panel-token", text: visible(d.strings[id]) }),
        el("span", { class: "muted", text: " id " + id })
      ]),
      d.excluded && d.excluded[t] ? el("p", { class: "excluded-note", id: "panel-excluded", text: "Left out of the summary: " + exclusionReason(d, t) + "." }) : null,
      el("dl", { class: "metrics" }, metrics.map(function (m) {
        return el("div", {}, [el("dt", { text: m[0] }), el("dd", { text: m[1] })]);
      })),
      el("div", { class: "tops" }, [
        topTable("Base", d.base, t, id, d.strings, "base"),
        topTable("Aligned", d.aligned, t, id, d.strings, "aligned")
      ]),
      el("h3", { text: "Answer up to this token" }),
      prefix
    ]);
    prefix.scrollTop = prefix.scrollHeight;
  }

  function select(t, focus) {
    var spans = state.spans;
    if (!(t >= 0 && t < spans.length)) return;
    if (state.current !== null && state.current !== t) {
      var old = spans[state.current];
      old.classList.remove("sel");
      old.setAttribute("aria-pressed", "false");
      old.tabIndex = -1;
    }
    var span = spans[t];
    span.classList.add("sel");
    span.setAttribute("aria-pressed", "true");
    span.tabIndex = 0;
    if (focus) span.focus();
    if (state.current !== t) {
      state.current = t;
      renderPanel(t);
      try {
        history.replaceState(null, "", "#t=" + t);
      } catch (e) {
        /* some file:// contexts refuse it: the page works without */
      }
    }
  }

  function tokenIndex(target) {
    var span = target && target.closest ? target.closest(".tok[data-t]") : null;
    return span ? Number(span.getAttribute("data-t")) : -1;
  }

  /** Why the filters left position t out (the rule of summarize: first N, or a special id). */
  function exclusionReason(d, t) {
    var f = d.filters || {};
    var why = [];
    if (t < (f.exclude_first || 0)) why.push("one of the answer's first " + f.exclude_first + " positions");
    if ((f.special_ids || []).indexOf(d.token[t]) >= 0) why.push("a special token");
    return why.join(", ") || "filtered";
  }

  /** The header's line about the summary's filters, with this example's count. */
  function filtersLine(d) {
    var f = d.filters;
    if (!f) return null;
    var parts = filterParts(f);
    var n = (d.excluded || []).filter(function (x) { return x; }).length;
    return el("p", { class: "filters", id: "filters" }, [
      "Summary filters: " + parts.join(" and ") + " are left out of the summary; here " + count(n) + " of " + count(d.n) + " positions, shown ",
      el("span", { class: "tok excluded", "aria-hidden": "true", text: "greyed" }),
      " (the numbers above count the others)."
    ]);
  }

  /** What the filters leave out, in words: ["each answer's first 2 positions", "special tokens (...)"]. */
  function filterParts(f) {
    var parts = [];
    if (f.exclude_first === 1) parts.push("each answer's first position");
    else if (f.exclude_first) parts.push("each answer's first " + f.exclude_first + " positions");
    if (f.exclude_special_tokens) parts.push("special tokens (" + (f.special_tokens || []).join(" ") + ")");
    return parts;
  }

  /** The index header's line about the filters the summary was computed with (none: nothing). */
  function indexFiltersLine(f, excluded) {
    if (!f) return null;
    var parts = filterParts(f);
    var n = excluded && isNum(excluded.positions) ? " (" + count(excluded.positions) + " positions)" : "";
    return el("p", { class: "filters", id: "filters", text: "Summary filters: " + parts.join(" and ") + " left out of every number here" + n + "; the example pages grey them out." });
  }

  /** What the models saw: the instruction and both contexts (template visible), collapsible. */
  function inputsSection(d) {
    var missing = "not recorded (the store was made by an earlier tdsdist)";
    function block(id, title, text, n, open) {
      var summary = el("summary", {}, [title, n === null ? null : el("span", { class: "muted", text: " (" + count(n) + " tokens, special tokens shown)" })]);
      var body = typeof text === "string"
        ? el("pre", { class: "context", id: id + "-text", tabindex: "0", text: text })
        : el("p", { class: "muted", id: id + "-text", text: missing });
      return el("details", { class: "input", id: id, open: open ? "open" : null }, [summary, body]);
    }
    var c = d.contexts || {};
    var a = c.aligned || null, b = c.base || null;
    return el("section", { class: "card inputs", id: "inputs", "aria-label": "What the models saw" }, [
      el("h2", { text: "What the models saw" }),
      block("instruction", "Instruction", d.instruction, null, true),
      block("context-aligned", "Aligned model's context", a ? a.text : null, a ? a.n : null, false),
      block("context-base", "Base model's context", b ? b.text : null, b ? b.n : null, false)
    ]);
  }

  function renderExample(d) {
    state.data = d;
    state.current = null;
    document.title = "Example " + d.id + " \u00b7 token distribution shift";
    var st = d.stats || {};
    var flags = Object.keys(d.flags || {}).filter(function (k) { return d.flags[k] === true; });
    var answer = el("div", { class: "answer", id: "answer", role: "group", "aria-label": "Answer tokens, coloured by category", "aria-describedby": "hint" });
    var frag = document.createDocumentFragment();
    state.spans = d.token.map(function (id, t) {
      var cat = CATS[d.cat[t]];
      var span = document.createElement("span");
      var differs = d.top1_differs && d.top1_differs[t];
      var out = d.excluded && d.excluded[t];
      span.className = "tok " + cat + (differs ? " differs" : "") + (out ? " excluded" : "");
      span.tabIndex = t === 0 ? 0 : -1;
      span.setAttribute("data-t", String(t));
      span.setAttribute("role", "button");
      span.setAttribute("aria-pressed", "false");
      span.setAttribute("aria-label", visible(d.strings[id]) + ", " + cat + ", base rank " + d.base.rank[t] + (differs ? ", base top 1 differs" : "") + (out ? ", left out of the summary" : ""));
      fillToken(span, d.strings[id]);
      frag.appendChild(span);
      return span;
    });
    answer.appendChild(frag);
    if (!d.token.length) answer.appendChild(el("p", { class: "muted", text: "This answer has no tokens." }));

    answer.addEventListener("click", function (e) {
      var t = tokenIndex(e.target);
      if (t >= 0) select(t, true);
    });
    answer.addEventListener("focusin", function (e) {
      var t = tokenIndex(e.target);
      if (t >= 0) select(t, false);
    });
    answer.addEventListener("keydown", function (e) {
      var t = tokenIndex(e.target);
      if (t < 0) return;
      var next = null;
      if (e.key === "ArrowRight") next = t + 1;
      else if (e.key === "ArrowLeft") next = t - 1;
      else if (e.key === "Home") next = 0;
      else if (e.key === "End") next = state.spans.length - 1;
      else if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select(t, false);
        document.getElementById("panel").scrollIntoView({ block: "nearest" });
        return;
      } else return;
      e.preventDefault();
      select(Math.min(Math.max(next, 0), state.spans.length - 1), true);
    });

    var nav = el("nav", { class: "exnav", "aria-label": "Examples" }, [
      el("a", { class: "navlink", href: "index.html", text: "\u2191 All examples" }),
      exampleLink(d.prev, "\u2190 Previous", "prev"),
      exampleLink(d.next, "Next \u2192", "next")
    ]);
    var stats = [
      ["tokens", count(d.n)],
      ["shifted", pct(st.shifted)],
      ["marginal", pct(st.marginal)],
      ["unshifted", pct(st.unshifted)]
    ];
    if (isNum(st.kl_aligned_base) || isNum(st.js)) {
      stats.push(["mean KL(aligned \u2016 base), exact", sig(st.kl_aligned_base)]);
      stats.push(["mean JS, exact", sig(st.js)]);
    }
    stats.push(["mean KL, top-k + tail lower bound", sig(st.kl)]);
    stats.push(["mean base p", pct(st.base_prob)]);
    show([
      nav,
      el("header", { class: "top" }, [
        el("h1", {}, ["Example ", el("span", { id: "example-id", text: String(d.id) })]),
        el("dl", { class: "config stats" }, stats.map(function (s) {
          return el("div", {}, [el("dt", { text: s[0] }), el("dd", { text: s[1] })]);
        })),
        flags.length ? el("p", { class: "flags", text: "Flags: " + flags.join(", ").replace(/_/g, " ") }) : null,
        filtersLine(d)
      ]),
      inputsSection(d),
      legend(d.thresholds, null),
      el("p", { class: "legend-extra", id: "differs-legend" }, [
        el("span", { class: "tok differs", "aria-hidden": "true", text: "token" }),
        " a line over a token: the base model's top 1 differs from the aligned model's top 1 there (" + count((d.top1_differs || []).filter(function (x) { return x; }).length) + " positions)"
      ]),
      el("p", { class: "muted", id: "hint", text: "Click a token, or Tab into the answer and move with \u2190 \u2192 (Home, End): the panel shows both models' top candidates at that position." }),
      el("div", { class: "exlayout" }, [
        el("section", { class: "card answer-card", "aria-label": "Answer" }, answer),
        el("aside", { class: "card panel", id: "panel", "aria-live": "polite", "aria-labelledby": "panel-title" }, [
          el("h2", { id: "panel-title", text: "No token selected" }),
          el("p", { class: "muted", text: "Select a token of the answer to see its position here." })
        ])
      ])
    ]);
    var m = /^#t=(\d+)$/.exec(location.hash);
    if (m) {
      var t0 = Number(m[1]);
      if (t0 < state.spans.length) {
        select(t0, false);
        state.spans[t0].scrollIntoView({ block: "center" });
      }
    }
  }

  function startExample() {
    var m = /(?:^|[?&])ex=(\d{1,9})(?:&|$)/.exec(location.search);
    if (!m) {
      fail("No example given: open examples from the report's index (example.html?ex=N).");
      return;
    }
    state.wanted = Number(m[1]);
    var script = document.createElement("script");
    script.src = "data/ex-" + state.wanted + ".js";
    script.onerror = function () {
      fail("Example #" + state.wanted + " has no page in this report: it is pending (not scored yet) or does not exist.");
    };
    document.body.appendChild(script);
  }

  // ---------------------------------------------------------------------------------------
  // Entry points, called by the data files.
  // ---------------------------------------------------------------------------------------

  window.tdsReport = {
    index: function (data) {
      try {
        renderIndex(data);
      } catch (e) {
        fail("The report could not be drawn: " + e);
        throw e;
      }
    },
    example: function (n, data) {
      if (n !== state.wanted) return; // not the file this page asked for
      try {
        renderExample(data);
      } catch (e) {
        fail("The example could not be drawn: " + e);
        throw e;
      }
    }
  };

  if (document.body && document.body.getAttribute("data-page") === "example") startExample();
})();
