"""``python -m benchmarks [--quick] [--only PART[,PART]]``: run the benchmarks, write results and BENCHMARKS.md.

Each part's result is written to the results file as soon as the part finishes, merged with the other
parts' last results, so a long run can be resumed or one part redone with ``--only``. A full run writes
``benchmarks/results.json`` and ``BENCHMARKS.md``; a ``--quick`` run (tiny sizes, to check the harness)
writes under ``build/benchmarks-quick/`` unless ``--results`` / ``--markdown`` say otherwise, so it never
replaces the committed numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from mobile_lenet.files import atomic_write_text

from . import (ablation, ablation_full, ablation_small, accuracy, accuracy_full, family, inference, machine,
               microcontrollers, report, training)
from .common import DEFAULT_PARTS, PARTS, ROOT, Options, default_shared_data

MODULES = {"accuracy-full": accuracy_full, "accuracy": accuracy, "ablation": ablation, "ablation-full": ablation_full,
           "ablation-small": ablation_small, "family": family, "training": training, "inference": inference, "microcontrollers": microcontrollers}
RUNNERS = {part: module.run for part, module in MODULES.items()} | {
    "family-10k": family.run_10k, "family-val": family.run_val, "family-goals": family.run_goals}
FULL_OUTPUTS = (ROOT / "benchmarks" / "results.json", ROOT / "BENCHMARKS.md")
QUICK_DIR = ROOT / "build" / "benchmarks-quick"


def parse_parts(text: str) -> list[str]:
    """``accuracy,inference`` -> ["accuracy", "inference"], in the canonical order; unknown names fail."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part {', '.join(unknown) or text!r} (choose from {', '.join(PARTS)})")
    return [part for part in PARTS if part in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny version of each part (checks the harness)")
    parser.add_argument("--only", type=parse_parts, default=list(DEFAULT_PARTS), metavar="PART[,PART]",
                        help=f"run only these parts ({', '.join(PARTS)}); the others keep their last results "
                             f"(default: {', '.join(DEFAULT_PARTS)}; the long ones run only when named)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results JSON (default benchmarks/results.json, or build/benchmarks-quick/ with --quick)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="Markdown report (default BENCHMARKS.md, or build/benchmarks-quick/ with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for training and inference (default: all cores)")
    parser.add_argument("--shared-data", type=Path, default=default_shared_data(),
                        help="folder with mnist-10k/ and upstream-mobile-lenet/ (default ../shared/data)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the accuracy part's training runs go (default build/benchmarks[-quick]/runs)")
    parser.add_argument("--fashion-minutes", type=float, default=Options.fashion_minutes,
                        help="time budget of the Fashion-MNIST training run; fewer epochs than the default "
                             "are run (and reported) if the default would not fit")
    return parser


def load_results(path: Path) -> dict:
    """The previous results (to merge into), or an empty record."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; starting afresh", file=sys.stderr)
    return {"parts": {}}


def write_outputs(results: dict, results_path: Path, markdown_path: Path, command: str) -> None:
    """Write the results JSON and regenerate the Markdown report from it."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    # atomically: a benchmark run beside this one reads the file before it writes its own parts
    atomic_write_text(results_path, json.dumps(results, indent=1) + "\n")
    try:
        results_name = str(results_path.resolve().relative_to(ROOT))
    except ValueError:  # outside the repository (a test's temporary folder)
        results_name = str(results_path)
    atomic_write_text(markdown_path, report.markdown(results, command, results_name))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    default_results, default_markdown = (QUICK_DIR / "results.json", QUICK_DIR / "BENCHMARKS.md") if args.quick \
        else FULL_OUTPUTS
    results_path, markdown_path = args.results or default_results, args.markdown or default_markdown
    work_dir = args.work_dir or (QUICK_DIR if args.quick else ROOT / "build" / "benchmarks") / "runs"
    command = " ".join(["python -m benchmarks", *map(shlex.quote, argv)])
    options = Options(quick=args.quick, threads=args.threads, shared_data=args.shared_data, work_dir=work_dir,
                      fashion_minutes=args.fashion_minutes, results_path=results_path,
                      log=lambda message: print(message, flush=True))

    results = load_results(results_path)
    failed = []
    for part in args.only:
        print(f"== {part}{' (quick)' if args.quick else ''}", flush=True)
        entry = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
                 "quick": args.quick, "threads": args.threads, "machine": machine.describe()}
        start = time.perf_counter()
        try:
            entry["result"] = RUNNERS[part](options)
        except Exception as error:  # record the failure and go on with the other parts
            traceback.print_exc()
            entry["error"] = f"{type(error).__name__}: {error}"
            failed.append(part)
        entry["seconds"] = time.perf_counter() - start
        results = load_results(results_path)  # again: a benchmark run beside this one may have written parts
        results.setdefault("parts", {})[part] = entry
        write_outputs(results, results_path, markdown_path, command)
        if "result" in entry:
            print("\n".join(report.SECTIONS[part](entry)), flush=True)
    print(f"wrote {results_path} and {markdown_path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
