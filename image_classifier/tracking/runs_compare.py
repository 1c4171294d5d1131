"""`image_classifier_runs compare`: two or more runs side by side (see `comparison.py`), as text or JSON,
and their curves in one plot."""

from __future__ import annotations

import sys

from image_classifier.durable_files import to_strict_json
from image_classifier.tracking.comparison import compare_document, compare_text, write_comparison_plot
from image_classifier.tracking.records import find_run
from image_classifier.tracking.runs_configs import CompareConfig


def compare_command(config: CompareConfig) -> int:
    records = [find_run(config.experiments_folder, reference) for reference in config.runs]
    if config.format == "json":
        print(to_strict_json(compare_document(records)), end="")
    else:
        print(compare_text(records))
    if config.plot is not None:
        write_comparison_plot(records, config.plot)
        # stdout holds the JSON document alone, for the program that reads it
        print(f"\ncurves plotted to {config.plot}", file=sys.stderr if config.format == "json" else sys.stdout)
    return 0
