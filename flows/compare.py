"""The `compare` flow: training runs side by side (one table, accuracy plots) and `segflow eval` evaluations
(their paired comparisons), published as Prefect artifacts.

Plots reach the UI as image artifacts whose URL is a `data:image/png;base64,...` URI: the UI draws an image
artifact as `<img src=URL>`, and Prefect stores only the URL, so the picture needs no file server and
survives the machine that made it. The markdown artifact repeats the table with the same images inline.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows.artifact_keys import artifact_key
from flows.run_plots import (
    RunInfo,
    comparison_rows,
    load_run,
    markdown_table,
    plot_accuracy,
    png_data_uri,
)

PLOT_TITLES = {
    "iteration": "accuracy vs iteration",
    "tokens": "accuracy vs generated tokens",
    "seconds": "accuracy vs compute seconds since RL start (measured work, not wall time)",
}


def find_eval(name: str, runs_dir: Path) -> dict | None:
    """An evaluation's summary by eval id or directory; None when `name` is not an evaluation."""
    for cand in (Path(name), runs_dir / "evals" / name):
        f = cand / "summary.json"
        if f.exists():
            summary = json.loads(f.read_text())
            if "cells" in summary:
                return summary
    return None


@flow(name="compare", log_prints=True)
def compare(names: list[str], runs_dir: str, out_dir: str) -> dict:
    """Returns {"runs": comparison rows, "plots": {name: png path}, "evals": [eval summaries]}."""
    from flows.evaluate import comparison_markdown

    runs_path = Path(runs_dir)
    runs: list[RunInfo] = []
    evals: list[dict] = []
    for name in names:
        ev = find_eval(name, runs_path)
        if ev is not None:
            evals.append(ev)
        else:
            runs.append(load_run(name, runs_path))  # raises, naming what it tried, for neither
    result: dict = {"runs": [], "plots": {}, "evals": evals}
    key = artifact_key("compare", *[r.run_id for r in runs], *[e["eval_id"] for e in evals])
    if runs:
        rows = comparison_rows(runs)
        plots = plot_accuracy(runs, Path(out_dir))
        result.update(runs=rows, plots={k: str(v) for k, v in plots.items()})
        create_table_artifact(rows, key=f"{key}-table", description="runs side by side")
        for name, path in plots.items():
            create_image_artifact(png_data_uri(path), key=f"{key}-{name}", description=PLOT_TITLES[name])
        images = "\n\n".join(f"![{PLOT_TITLES[n]}]({png_data_uri(p)})" for n, p in plots.items())
        create_markdown_artifact(
            f"# Runs compared\n\n{markdown_table(rows)}\n\n{images}", key=f"{key}-report", description="table and plots"
        )
    for ev in evals:
        create_markdown_artifact(
            comparison_markdown(ev),
            key=artifact_key(ev["eval_id"], "compare"),
            description=f"{ev['eval_id']}: paired comparisons",
        )
    return result
