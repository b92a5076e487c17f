"""The page at `/` of `python -m job serve`: paste or pick a dialogue, read the fine-tuned summary and, for adapter
runs, the base model's beside it (the same model with its adapter switched off), above the run's ROUGE table.
One HTML document with its script inline: the page calls POST /invocations like any client."""

from __future__ import annotations

import json
from html import escape

from job import tables

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dialogsum-qlora: {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
textarea {{ width: 100%; min-height: 12rem; font: inherit; }}
.sides {{ display: grid; grid-template-columns: repeat({columns}, 1fr); gap: 1rem; margin-top: 1rem; }}
.side {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.75rem; min-height: 5rem; }}
.side h2 {{ font-size: 1rem; margin: 0 0 0.5rem; }}
.meta {{ color: #666; font-size: 0.85rem; }}
table {{ border-collapse: collapse; margin-top: 0.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.error {{ color: #b00020; }}
</style>
</head>
<body>
<h1>Dialogue summarization: run {run}</h1>
<p class="meta">{method} run, {dtype}. Greedy summaries with the run's own prompt and settings.</p>
<form id="form">
<label for="sample">Pick a dialogue from the run's test set</label>
<select id="sample"><option value="">(paste your own)</option>{options}</select>
<textarea id="dialogue" name="dialogue" placeholder="#Person1#: Hi, ...&#10;#Person2#: ..."></textarea>
<button id="summarize" type="submit">Summarize</button> <span id="status" class="meta"></span>
</form>
<div class="sides">
<div class="side"><h2>fine-tuned</h2><div id="finetuned"></div><div class="meta" id="finetuned-meta"></div></div>
{base_side}
</div>
<h2>ROUGE of this run</h2>
<p class="meta">{caption}</p>
{table}
<script>
const samples = {samples};
const sides = {sides};
document.getElementById("sample").addEventListener("change", (e) => {{
  if (e.target.value !== "") document.getElementById("dialogue").value = samples[Number(e.target.value)];
}});
async function summarize(model, dialogue) {{
  const out = document.getElementById(model), meta = document.getElementById(model + "-meta");
  out.textContent = "..."; out.className = ""; meta.textContent = "";
  try {{
    const r = await fetch("invocations", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                          body: JSON.stringify({{dialogue: dialogue, model: model}})}});
    const body = await r.json();
    if (!r.ok) {{ out.textContent = body.error; out.className = "error"; return; }}
    const s = body.summaries[0];
    out.textContent = s.summary;
    meta.textContent = s.new_tokens + " tokens, " + body.seconds + " s";
  }} catch (err) {{ out.textContent = String(err); out.className = "error"; }}
}}
document.getElementById("form").addEventListener("submit", async (e) => {{
  e.preventDefault();
  const dialogue = document.getElementById("dialogue").value;
  document.getElementById("status").textContent = "summarizing...";
  await Promise.all(sides.map((m) => summarize(m, dialogue)));
  document.getElementById("status").textContent = "done";
}});
</script>
</body>
</html>
"""

BASE_SIDE = (
    '<div class="side"><h2>base (adapter switched off)</h2><div id="base"></div>'
    '<div class="meta" id="base-meta"></div></div>'
)


def _script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c")


def render(served) -> str:
    rows = tables.rouge_rows(served.metrics, change=True) if served.metrics.get("finetuned") else []
    options = "".join(
        f'<option value="{k}">{escape(d[:70].replace(chr(10), " "))}...</option>' for k, d in enumerate(served.samples)
    )
    return PAGE.format(
        run=escape(served.run),
        method=escape(served.method),
        dtype=escape(served.dtype or "loading"),
        columns=2 if served.adapter else 1,
        options=options,
        base_side=BASE_SIDE if served.adapter else "",
        caption=escape(tables.caption(served.metrics)) if rows else "no scores in this run's metrics.json",
        table=tables.html(rows) if rows else "",
        samples=_script_json(served.samples),
        sides=_script_json(["finetuned", "base"] if served.adapter else ["finetuned"]),
    )
