"""benchmarks/results.json (one record per machine kind, each part dated) and the printed table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merge(path: Path, kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write `record` under `kind`, keeping parts of an earlier record that this run did not measure."""
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged = {**results.get(kind, {}), **record}
    merged["ratios"] = {
        "train_speedup": (merged.get("train") or {}).get("train_speedup"),
        "eval_speedup": (merged.get("eval") or {}).get("eval_speedup"),
        "serve_speedup_32_clients": (merged.get("serve") or {}).get("serve_speedup_32_clients"),
    }
    results[kind] = merged
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return merged


def table(record: dict[str, Any]) -> str:
    rows = [("benchmark", "the job", "the notebooks' way", "ratio")]
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
    if ev := record.get("eval"):
        rows.append(
            (
                "eval",
                f"{ev['batched']['summaries_per_second']:.2f} summaries/s (batch {ev['batch_size']})",
                f"{ev['one_at_a_time']['summaries_per_second']:.2f} summaries/s (one at a time)",
                f"eval_speedup {ev['eval_speedup']:.2f}x",
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
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
