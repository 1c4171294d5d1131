"""Print a run's total and per-class test accuracy as a Markdown table (for $GITHUB_STEP_SUMMARY).

python3 .github/scripts/job_summary.py experiments/<experiment>/<run>
"""

import json
import sys
from pathlib import Path


def summary(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    lines = [
        f"### Run `{run_dir.parent.name}/{run_dir.name}`",
        "",
        "| class | test accuracy (%) |",
        "| --- | ---: |",
        *(
            f"| {name} | {'n/a' if accuracy is None else f'{accuracy:.2f}'} |"
            for name, accuracy in metrics["class_accuracy"].items()
        ),
        f"| **total** | **{metrics['test_accuracy']:.2f}** |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summary(Path(sys.argv[1])))
