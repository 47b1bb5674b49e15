"""The learning curve of a run made of stages (each stage a run folder that started from the last).

    python -m benchmarks.curve STAGE_DIR [STAGE_DIR ...] [--fork STAGE_DIR] [--png docs/standing_curve.png]

Reads each folder's metrics.jsonl and prints one JSON line per validation: the stage, its step,
the CPU hours of all stages so far and the validation scores.  A stage that started from the
previous stage's weights counts its CPU from zero, so its count is added to all earlier stages'.
A stage named with ``--fork`` resumed the previous stage's full state (``--resume`` from a copy of
its last.pt) and so continued that stage's CPU count: it is placed on the previous stage's offset,
not after its end (the previous stage's later points are another branch).  With ``--png``, plots
BLEU and edit distance against CPU hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path


def curve(stages: Sequence[Path], forks: Collection[Path] = ()) -> list[dict]:
    points, offset, previous_offset = [], 0.0, 0.0
    forks = {Path(f).resolve() for f in forks}
    for stage in stages:
        if stage.resolve() in forks:
            offset = previous_offset  # its cpu_s already includes the parent's count at the fork
        previous_offset = offset
        records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
        cpu = 0.0
        for record in records:
            cpu = record.get("cpu_s", cpu)  # validation records follow the step record that carries it
            if "val_bleu" in record:
                points.append({"stage": stage.name, "step": record["step"],
                               "cpu_hours": round((offset + cpu) / 3600, 3),
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
    parser.add_argument("--fork", type=Path, action="append", default=[],
                        help="a stage (also listed among the stages) that resumed the previous stage's "
                             "state and continued its CPU count; repeatable")
    parser.add_argument("--png", type=Path, help="write the plot here")
    args = parser.parse_args(argv)
    stray = [str(f) for f in args.fork if f.resolve() not in {s.resolve() for s in args.stages[1:]}]
    if stray:
        parser.error(f"--fork {stray[0]}: not one of the stages after the first")
    try:
        points = curve(args.stages, args.fork)
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
