"""`python -m benchmarks [--size small|medium|tiny] [--only train,eval,cost] [--out benchmarks/results.json]`; the GPU
check: `python -m benchmarks gpu [--tiny] [--only STAGE,...]` (benchmarks/gpu.py); serving:
`python -m benchmarks serve` (benchmarks/serve.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

PARTS = ("train", "eval", "cost")
DEFAULT_OUT = Path(__file__).with_name("results.json")


def parse(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.common import SIZES

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="how many examples, steps and repeats")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (one record per machine kind)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 gives steadier figures on a machine shared with others",
    )
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := sorted(set(args.parts) - set(PARTS)):
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def machine_kind() -> str:
    import torch

    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:  # the GPU check: benchmarks/gpu.py
        from benchmarks import gpu

        return gpu.main(argv[1:])
    if argv[:1] == ["serve"]:  # dynamic batching against one request at a time: benchmarks/serve.py
        from benchmarks import serve

        return serve.main(argv[1:])
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    import torch

    from benchmarks import common, report

    if args.threads:
        torch.set_num_threads(args.threads)
    size = common.SIZES[args.size]
    record: dict = {
        "date": common.now(),
        "size": args.size,
        "machine": common.machine(),
        "versions": common.versions(),
    }
    if "train" in args.parts or "eval" in args.parts:
        record["examples"] = _examples(size)
    if "train" in args.parts:
        from benchmarks import train_speed

        record["train"] = {"date": common.now(), **train_speed.run(size)}
    if "eval" in args.parts:
        from benchmarks import eval_speed

        record["eval"] = {"date": common.now(), **eval_speed.run(size)}
    if "cost" in args.parts:
        from benchmarks import cost

        record["cost"] = {"date": common.now(), **cost.run()}
    merged = report.merge(args.out, machine_kind(), record)
    print(report.table(merged))
    print(f"\nwritten to {args.out} under {machine_kind()!r}")
    return 0


def _examples(size) -> dict:
    from benchmarks import common, dialogs

    cfg = common.config()
    n = max(size.train_examples, size.eval_dialogues)
    return {
        "generator": "benchmarks.dialogs (seed 0)",
        **dialogs.statistics_of(common.rows(n), common.load_tokenizer(cfg)),
    }


if __name__ == "__main__":
    sys.exit(main())
