"""The learning curve of a run made of stages (each stage a run folder that started from the last).

    python -m benchmarks.curve STAGE_DIR [STAGE_DIR ...] [--png docs/standing_curve.png]

Reads each folder's metrics.jsonl and prints one JSON line per validation: the stage, its step,
the CPU hours of all stages so far (each stage's count continues from the previous stage's last
logged value) and the validation scores.  With ``--png``, plots BLEU and edit distance against
CPU hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def curve(stages: Sequence[Path]) -> list[dict]:
    points, offset = [], 0.0
    for stage in stages:
        records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
        cpu = 0.0
        for record in records:
            cpu = record.get("cpu_s", cpu)  # validation records follow the step record that carries it
            if "val_bleu" in record:
                points.append({"stage": stage.name, "step": record["step"], "cpu_hours": round((offset + cpu) / 3600, 3),
                               "val_bleu": record["val_bleu"], "val_edit_distance": record["val_edit_distance"]})
        offset += cpu
    return points


def plot(points: list[dict], png: Path) -> None:
    from benchmarks.plotting import figure, save

    fig, axes = figure(2, 11)
    for stage in dict.fromkeys(p["stage"] for p in points):
        rows = [p for p in points if p["stage"] == stage]
        x = [p["cpu_hours"] for p in rows]
        axes[0].plot(x, [p["val_bleu"] for p in rows], marker="o", label=stage)
        axes[1].plot(x, [p["val_edit_distance"] for p in rows], marker="o", label=stage)
    save(fig, axes, ("BLEU, 200 im2latex validation renders", "edit distance, same images"),
         "CPU hours of training (all stages)", png, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curve", description=__doc__.splitlines()[0])
    parser.add_argument("stages", type=Path, nargs="+", help="run folders, in the order they ran")
    parser.add_argument("--png", type=Path, help="write the plot here")
    args = parser.parse_args(argv)
    try:
        points = curve(args.stages)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for point in points:
        print(json.dumps(point))
    if args.png is not None:
        plot(points, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
