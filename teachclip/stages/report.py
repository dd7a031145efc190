"""``teach report``: the demo's results table — teachers vs students, mean ± std over seeds.

Reads every ``<run>.json`` written by ``teach evaluate`` in a metrics directory. A run named
``<variant>-s<seed>`` is a student variant (``students:`` in params.yaml) trained with that seed;
``teacher-<name>`` is a teacher. Writes ``results.md`` (a Markdown table), ``results.json`` (the
same numbers, read by ``dvc metrics show``) and ``results.png`` (a bar chart of t2v R@1).
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from teachclip.pipeline.config import Params

RUN_NAME = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")
COLUMNS = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1")


class ReportError(ValueError):
    pass


@dataclass
class Row:
    name: str
    role: str  # "teacher" or "student"
    description: str
    runs: list[dict] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def stat(self, key: str) -> tuple[float, float]:
        values = [float(run[key]) for run in self.runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), spread

    def cost(self) -> str:
        first = self.runs[0]
        if "query_cost" in first:
            return str(first["query_cost"])
        return "one dot product per video" if self.role == "student" else "teacher scoring per pair"


def collect(metrics_dir: Path, params: Params) -> list[Row]:
    files = sorted(metrics_dir.glob("*.json"))
    if not files:
        raise ReportError(f"{metrics_dir}: no metrics files (*.json) to report")
    rows: dict[str, Row] = {}
    for path in files:
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from exc
        missing = [key for key in COLUMNS if key not in metrics]
        if missing:
            raise ReportError(f"{path}: missing metric(s) {', '.join(missing)}")
        name = path.stem
        if name.startswith("teacher-"):
            row = rows.setdefault(name, Row(name.removeprefix("teacher-"), "teacher", "teacher"))
            row.runs.append(metrics)
            continue
        match = RUN_NAME.match(name)
        variant = match["variant"] if match else name
        variant_params = params.students.get(variant)
        description = variant_params.description if variant_params else ""
        row = rows.setdefault(variant, Row(variant, "student", description))
        row.runs.append(metrics)
        row.seeds.append(int(match["seed"]) if match else 0)
    order = list(params.students)
    teachers = sorted((r for r in rows.values() if r.role == "teacher"), key=lambda r: r.name)
    students = sorted(
        (r for r in rows.values() if r.role == "student"),
        key=lambda r: (order.index(r.name) if r.name in order else len(order), r.name),
    )
    return teachers + students


def render_markdown(rows: list[Row]) -> str:
    header = "| model | role | seeds | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | v2t R@1 | retrieval cost per query |"
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        cells = []
        for key in COLUMNS:
            mean, spread = row.stat(key)
            cells.append(f"{mean:.1f} ± {spread:.1f}" if len(row.runs) > 1 else f"{mean:.1f}")
        seeds = str(len(row.runs))
        lines.append(f"| {row.name} | {row.role} | {seeds} | " + " | ".join(cells) + f" | {row.cost()} |")
    texts, videos = rows[0].runs[0].get("texts"), rows[0].runs[0].get("videos")
    lines.append("")
    lines.append(f"Test split: {texts} queries over {videos} videos; mean ± sample std over seeds.")
    for row in rows:
        if row.description and row.role == "student":
            lines.append(f"- **{row.name}**: {row.description}")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.name for row in rows]
    means = [row.stat("t2v_R1")[0] for row in rows]
    spreads = [row.stat("t2v_R1")[1] for row in rows]
    colours = ["#888888" if row.role == "teacher" else "#1f77b4" for row in rows]
    figure, axis = plt.subplots(figsize=(1.0 + 0.9 * len(rows), 3.6), dpi=120)
    axis.bar(names, means, yerr=spreads, color=colours, capsize=4)
    axis.set_ylabel("text-to-video R@1 (%)")
    axis.set_title("Demo benchmark: teachers (grey) and students (blue)")
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    # no timestamp in the PNG metadata, so reruns give identical bytes
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def report(metrics_dir: str | Path, out_dir: str | Path, params: Params) -> list[Row]:
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    rows = collect(metrics_dir, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(render_markdown(rows))
    summary = {
        row.name: {
            "role": row.role,
            "runs": len(row.runs),
            **{f"{key}_mean": round(row.stat(key)[0], 3) for key in COLUMNS},
            **{f"{key}_std": round(row.stat(key)[1], 3) for key in COLUMNS},
        }
        for row in rows
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot(rows, out_dir / "results.png")
    return rows
