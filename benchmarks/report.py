"""benchmarks/results.json (one record per machine kind, each part dated) and the printed table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Against the strongest peer's defaults (issue "The GPU path"): (part, ratio key in that part, the least it must be).
GOALS = (
    ("train", "speedup_over_per_batch_padding", 1.3),
    ("train", "speedup_over_group_by_length", 1.0),
    ("eval", "speedup_over_unsorted_batched", 1.5),
)


def merge(path: Path, kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write `record` under `kind`, keeping parts of an earlier record that this run did not measure."""
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged = {**results.get(kind, {}), **record}
    merged["ratios"] = {
        "train_speedup": (merged.get("train") or {}).get("train_speedup"),
        "eval_speedup": (merged.get("eval") or {}).get("eval_speedup"),
        "serve_speedup_32_clients": (merged.get("serve") or {}).get("serve_speedup_32_clients"),
        **{f"{part}_{key}": (merged.get(part) or {}).get(key) for part, key, _ in GOALS},
    }
    merged["goals"] = goals(merged)
    results[kind] = merged
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return merged


def goals(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal with its measured ratio and whether it was met (None where that part was never measured)."""
    out = {}
    for part, key, least in GOALS:
        measured = (record.get(part) or {}).get(key)
        out[f"{part}_{key}"] = {
            "at_least": least,
            "measured": measured,
            "met": None if measured is None else measured >= least,
        }
    return out


def goal_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for name, g in goals(record).items():
        verdict = "not measured" if g["met"] is None else f"{g['measured']:.2f}x {'pass' if g['met'] else 'FAIL'}"
        lines.append(f"goal {name} >= {g['at_least']}x: {verdict}")
    return lines


def table(record: dict[str, Any]) -> str:
    rows = [("benchmark", "the job", "the notebooks' and the peers' ways", "ratio")]
    if train := record.get("train"):
        job, base = train["padding_free"], train["fixed_padding"]
        rows.append(
            (
                "train",
                f"{job['tokens_per_second']:,.0f} tokens/s, padding {job['padding_fraction']:.0%}",
                f"{base['tokens_per_second']:,.0f} tokens/s, padding {base['padding_fraction']:.0%}",
                f"train_speedup {train['train_speedup']:.2f}x",
            )
        )
        for name, label in (
            ("per_batch_padding", "padding to each batch's longest"),
            ("group_by_length", "group-by-length"),
        ):
            if peer := train.get(name):
                rows.append(
                    (
                        "train",
                        "",
                        f"{peer['tokens_per_second']:,.0f} tokens/s, padding {peer['padding_fraction']:.0%} ({label})",
                        f"{train[f'speedup_over_{name}']:.2f}x",
                    )
                )
    if ev := record.get("eval"):
        rows.append(
            (
                "eval",
                f"{ev['batched']['summaries_per_second']:.2f} summaries/s (batch {ev['batch_size']})",
                f"{ev['one_at_a_time']['summaries_per_second']:.2f} summaries/s (one at a time)",
                f"eval_speedup {ev['eval_speedup']:.2f}x",
            )
        )
        if peer := ev.get("unsorted_batched"):
            rows.append(
                (
                    "eval",
                    "",
                    f"{peer['summaries_per_second']:.2f} summaries/s (unsorted batches of {ev['batch_size']})",
                    f"{ev['speedup_over_unsorted_batched']:.2f}x",
                )
            )
    if cost := record.get("cost"):
        sm, kg = cost["sagemaker"], cost["kaggle_t4x2"]
        rows.append(
            (
                f"cost {sm['instance_type']}",
                f"{sm['billed_hours']:.2f} h: ${sm['on_demand_usd']:.2f} on-demand, ${sm['spot_usd']:.2f} spot",
                f"{sm['notebook_way']['billed_hours']:.2f} h: ${sm['notebook_way']['on_demand_usd']:.2f}"
                f" on-demand, ${sm['notebook_way']['spot_usd']:.2f} spot",
                "derived",
            )
        )
        rows.append(
            (
                "cost Kaggle T4 x2",
                f"{kg['session_hours']:.2f} h of quota, $0",
                f"{kg['notebook_way']['billed_hours']:.2f} h of quota, $0",
                "derived",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + ([""] + goal_lines(record) if record.get("train") or record.get("eval") else []))
