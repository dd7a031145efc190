"""``teach report``: the demo's results table — teachers vs students, mean ± std over seeds.

Reads every ``<run>.json`` written by ``teach evaluate`` in a metrics directory. A run named
``<variant>-s<seed>`` is a student variant (``students:`` in params.yaml) trained with that seed;
``teacher-<name>`` is a teacher. Writes ``results.md`` (a Markdown table), ``results.json`` (the
same numbers, read by ``dvc metrics show``) and ``results.png`` (a bar chart of t2v R@1).

Given the saved models and the data (:class:`GalleryInputs`), also ``gallery.html``: what the best
teacher and the best student retrieve for about 20 test queries, with frame relevance and AFA weights,
and the captions the audit flagged (``gallery.py`` computes it, ``html.py`` draws it).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from teachclip.core.config import Params
from teachclip.core.errors import InputError
from teachclip.core.files import atomic_write
from teachclip.stages.report.gallery import RUN_NAME, build_gallery
from teachclip.stages.report.html import render_gallery

GALLERY = "gallery.html"
COLUMNS = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1")  # required in every metrics file


class ReportError(InputError):
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

    def cost(self, baseline_ms: float | None) -> str:
        """Measured scoring time per query (``score_ms_per_query`` from evaluate), and the ratio to the
        baseline's; older metrics files without it get a description instead."""
        if "score_ms_per_query" not in self.runs[0]:
            return "one dot product per video" if self.role == "student" else "teacher scoring per pair"
        ms = self.stat("score_ms_per_query")[0]
        ratio = f" ({ms / baseline_ms:.1f}x)" if baseline_ms else ""
        return f"{ms:.3g} ms{ratio}"


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
    """The table, with each student's share of the gap between the first student (the baseline,
    meanP in the demo) and the best teacher on t2v R@1 and R@5."""
    students = [row for row in rows if row.role == "student"]
    teachers = [row for row in rows if row.role == "teacher"]
    baseline = students[0] if students else None
    baseline_ms = baseline.stat("score_ms_per_query")[0] if baseline and "score_ms_per_query" in baseline.runs[0] else None

    def gap_closed(row: Row, key: str) -> str:
        if baseline is None or not teachers or row.role != "student" or row is baseline:
            return ""
        best = max(teacher.stat(key)[0] for teacher in teachers)
        base = baseline.stat(key)[0]
        return f"{100 * (row.stat(key)[0] - base) / (best - base):.0f}%" if best > base else "n/a"

    header = ("| model | role | seeds | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | v2t R@1 | gap closed R@1 / R@5 "
              "| scoring time per query |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        cells = []
        for key in COLUMNS:
            mean, spread = row.stat(key)
            cells.append(f"{mean:.1f} ± {spread:.1f}" if len(row.runs) > 1 else f"{mean:.1f}")
        gaps = " / ".join(filter(None, (gap_closed(row, "t2v_R1"), gap_closed(row, "t2v_R5"))))
        lines.append(f"| {row.name} | {row.role} | {len(row.runs)} | " + " | ".join(cells)
                     + f" | {gaps} | {row.cost(baseline_ms)} |")
    texts, videos = rows[0].runs[0].get("texts"), rows[0].runs[0].get("videos")
    lines.append("")
    lines.append(f"Test split: {texts} queries over {videos} videos; mean ± sample std over seeds. "
                 f"Gap closed: (student - {baseline.name if baseline else 'baseline'}) / (best teacher - "
                 f"{baseline.name if baseline else 'baseline'}). Scoring time: one query against every test "
                 f"video from encoded features, wall clock on the machine that ran the pipeline (ratio to "
                 f"{baseline.name if baseline else 'the baseline'}).")
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


@dataclass(frozen=True)
class GalleryInputs:
    """What the gallery reads besides the metrics: the saved models, the store they score (frames or
    frame features), the frames store for thumbnails, the manifest and, optionally, a caption audit."""

    runs: Path
    videos: Path
    frames: Path
    manifest: Path
    audit: Path | None = None


def report(metrics_dir: str | Path, out_dir: str | Path, params: Params,
           gallery: GalleryInputs | None = None) -> list[Row]:
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
            **({"score_ms_per_query": round(row.stat("score_ms_per_query")[0], 4)}
               if "score_ms_per_query" in row.runs[0] else {}),
        }
        for row in rows
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot(rows, out_dir / "results.png")
    if gallery is not None:
        page = render_gallery(build_gallery(metrics_dir, gallery.runs, gallery.videos, gallery.frames,
                                            gallery.manifest, params, gallery.audit), params.report)
        atomic_write(out_dir / GALLERY, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return rows
