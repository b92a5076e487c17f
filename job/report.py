"""The human-readable side of a run: `report.md` and the loss curve `loss.png`."""

from __future__ import annotations

from pathlib import Path

from job import published, tables


def plot_loss(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", color="#d62728")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on summary tokens")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _loss(x: float | None) -> str:
    """A loss to 4 significant digits: the differences between runs show, float noise does not."""
    return "None" if x is None else f"{x:.4g}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def write_report(path: Path, metrics: dict, predictions: list[dict], samples: int) -> None:
    run, scorer, gen, train = metrics["run"], metrics["scorer"], metrics["generation"], metrics["train"]
    lines = [
        f"# Run {run['name']}",
        "",
        f"- method: **{run['method']}**, model: `{run['model']}`, data set: `{run['dataset']}`",
        f"- started {run['started_at']}, finished {run['finished_at']} ({run['seconds']:.0f} s)",
        f"- trainable parameters: {train['trainable_params']:,} of {train['total_params']:,} "
        f"({100 * train['trainable_params'] / max(train['total_params'], 1):.3f}%)",
        f"- training: {train['steps']} steps, {train['epochs']:.2f} epochs, final loss {_loss(train['loss'])}, "
        f"best validation loss {_loss(train['eval_loss'])}, {train['tokens_per_second']:.0f} tokens/s, "
        f"padding {100 * train['padding_fraction']:.1f}%, peak memory {train['peak_memory_mb']:.0f} MB",
        "",
        "## ROUGE",
        "",
        f"{scorer['n_dialogues']} dialogues, {scorer['n_references']} references. Scorer `{scorer['name']}` "
        f"{scorer['version']}, stemming on, rougeLsum on newline-split sentences; each figure is the mean over every "
        f"dialogue-reference pair, with its 95% bootstrap interval. Greedy decoding, max_new_tokens "
        f"{gen['max_new_tokens']}.",
        "",
        tables.markdown(tables.rouge_rows(metrics, baselines=False, lengths=True)),
        "",
        "Best reference per dialogue (multi-reference):",
        "",
        tables.markdown(tables.rouge_rows(metrics, baselines=False, multi_reference=True)),
    ]
    lines += ["", *published.markdown_section(metrics)]
    lines += ["## Output lengths", ""]
    for key, label in (("base", "base"), ("finetuned", "fine-tuned")):
        if metrics.get(key):
            b = metrics[key]
            lines.append(
                f"- {label}: {b['avg_words']:.1f} words on average, {b['length_ratio']:.2f}x the references, "
                f"{b['hit_max_new_tokens']} summaries stopped at max_new_tokens"
            )
    lines += ["", "## Loss", "", "![loss](loss.png)", "", "## Samples", ""]
    for p in predictions[:samples]:
        lines += [
            f"### {p['id']}",
            "",
            "| | summary |",
            "|---|---|",
            f"| dialogue | {_escape(p['dialogue'][:1200])} |",
            f"| human | {_escape(p['references'][0])} |",
        ]
        if p.get("base") is not None:
            lines.append(f"| base | {_escape(p['base'])} |")
        lines += [f"| fine-tuned | {_escape(p['finetuned'])} |", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
