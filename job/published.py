"""Published reference figures, shown next to a run only where the run was scored the same way.

ROUGE on DialogSum moves by points with the scorer, stemming, the split and how several references are used (see
docs/data.md), so each figure records how it was scored, and `comparable` admits a run only when its metrics.json
says it was scored that way too. Standard library only: compare, the report and the launchers can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from job import tables


@dataclass(frozen=True)
class Published:
    name: str
    source: str
    dataset: str
    """What the run's data.dataset must name (case-insensitive substring): the release or the Hub copy."""
    split: str
    n_dialogues: int
    n_references_in_split: int
    """References the split holds in all: with n_dialogues, what tells DialogSum's test split (500, 1500) from its
    validation split (500, 500) in a run's metrics.json."""
    references: str
    """`first`: against each dialogue's first reference alone (a run's `first_reference` block)."""
    scorer: dict[str, Any]
    scores: dict[str, float]

    def describe(self) -> str:
        how = "the first reference (summary1) alone" if self.references == "first" else self.references
        return (
            f"{self.name}: {self.source}; {self.split} split, {self.n_dialogues} dialogues, scored against {how} "
            f"with {self.scorer['name']}, stemming {'on' if self.scorer['use_stemmer'] else 'off'}, ROUGE-L as "
            f"{self.scorer['rouge_l']}"
        )


PUBLISHED = (
    Published(
        name="BART-large (DialogSum baseline, published)",
        source="cylnlp/dialogsum, Baseline/README.md (the release's own baseline outputs)",
        dataset="dialogsum",
        split="test",
        n_dialogues=500,
        n_references_in_split=1500,
        references="first",
        scorer={"name": "rouge_score", "use_stemmer": True, "rouge_l": "rougeL"},
        scores={"rouge1": 0.459458, "rouge2": 0.213612, "rougeL": 0.387189},
    ),
)

BLOCK_FOR = {"first": "first_reference"}
"""The metrics.json sub-block a run's scores against a published figure's references are in."""


def why_not(ref: Published, metrics: dict[str, Any]) -> str | None:
    """Why a run's metrics cannot stand next to `ref` (None when they can)."""
    scorer, run = metrics.get("scorer") or {}, metrics.get("run") or {}
    if ref.dataset not in str(run.get("dataset", "")).lower():
        return f"the run's data set is {run.get('dataset')!r}, not DialogSum"
    if (scorer.get("n_dialogues"), scorer.get("n_references")) != (ref.n_dialogues, ref.n_references_in_split):
        return (
            f"the run scored {scorer.get('n_dialogues')} dialogues with {scorer.get('n_references')} references, "
            f"not the whole {ref.split} split ({ref.n_dialogues} dialogues, {ref.n_references_in_split} references)"
        )
    if scorer.get("name") != ref.scorer["name"] or scorer.get("use_stemmer") != ref.scorer["use_stemmer"]:
        return "the run's scorer or stemming differs"
    if not any((metrics.get(k) or {}).get(BLOCK_FOR[ref.references]) for k in ("finetuned", "base")):
        return f"the run's metrics.json has no {BLOCK_FOR[ref.references]} scores (an older run)"
    return None


def comparable(metrics: dict[str, Any]) -> list[Published]:
    return [ref for ref in PUBLISHED if why_not(ref, metrics) is None]


def rows(metrics: dict[str, Any], label_prefix: str = "") -> list[list[str]]:
    """The header, then each comparable published figure after the run's own scores computed the same way."""
    blocks: list[tuple[str, dict[str, Any]]] = []
    for ref in comparable(metrics):
        key = BLOCK_FOR[ref.references]
        for label, block in tables.scored_blocks(metrics, baselines=False):
            blocks.append((f"{label_prefix}{label} ({ref.references} reference)", block[key]))
        blocks.append((ref.name, ref.scores))
    return tables.block_rows(blocks) if blocks else []


def markdown_section(metrics: dict[str, Any], label_prefix: str = "") -> list[str]:
    """Lines for report.md: the comparable published figures with how they were scored, or why none is shown."""
    table = rows(metrics, label_prefix)
    if not table:
        reasons = "; ".join(f"{ref.name}: {why_not(ref, metrics)}" for ref in PUBLISHED)
        return ["## Published figures", "", f"None shown: none was scored the same way as this run ({reasons}).", ""]
    notes = [f"- {ref.describe()}" for ref in comparable(metrics)]
    return ["## Published figures", "", "Scored the same way as this run:", "", tables.markdown(table), "", *notes, ""]
