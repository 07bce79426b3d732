/* What tdsdist's report and `serve`'s page share, loaded before report.js or page.js: the
   number and token-text formatting and the DOM clearing both pages do alike. One copy, so that a
   token looks the same in the report and in the served page. Vanilla JavaScript, no library. */
var tdsBase = (function () {
  "use strict";

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function isNum(x) {
    return typeof x === "number" && !isNaN(x);
  }

  function prob(logprob) {
    if (!isNum(logprob)) return "\u2013";
    var p = Math.exp(logprob);
    if (p === 0) return "0";
    if (p >= 0.001) return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%";
    return p.toExponential(1);
  }

  /** A token with its whitespace and control characters made visible (tables, labels):
      space, newline, tab as \u2423 \u21b5 \u21e5; other controls as \xNN escapes (ASCII, so
      every font can show them). */
  function visible(s) {
    if (typeof s !== "string" || s === "") return "\u2205";
    return s
      .replace(/ /g, "\u2423")
      .replace(/\n/g, "\u21b5")
      .replace(/\t/g, "\u21e5")
      .replace(/[\u0000-\u001f\u007f-\u009f]/g, function (c) {
        return "\\x" + ("0" + c.charCodeAt(0).toString(16)).slice(-2);
      });
  }

  return { clear: clear, isNum: isNum, prob: prob, visible: visible };
})();
