"""The README's "Several at once" table from docs/bench/parallel-*.json (parallel_runs.sh)."""

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    print("| task | version | 2 at once vs one after the other | 4 at once vs one after the other | beside a busy loop (share of alone) | alone, default vs every core fixed |")
    print("|---|---|---|---|---|---|")
    for task in ("segment", "semseg", "predict"):
        for version, name in (("before", f"parallel-{task}-before.json"), ("now", f"parallel-{task}.json")):
            run = json.loads((HERE / name).read_text())
            busy = run["beside a busy loop: fps"] / run["alone: fps"] if "alone: fps" in run else run["beside a busy loop: share of alone (wall)"]
            alone = run.get("alone: median of the pairs' ratios")
            print(
                f"| {task} | {version} | {run['2 at once: speed-up over one after the other']:.2f}x "
                f"| {run['4 at once: speed-up over one after the other']:.2f}x | {busy:.0%} "
                f"| {'-' if alone is None else f'{alone:.2f}'} |"
            )


if __name__ == "__main__":
    main()
