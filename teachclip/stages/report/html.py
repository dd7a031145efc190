"""The gallery as one self-contained HTML page: every thumbnail a JPEG ``data:`` URI, the style inline,
no script, no font or file from anywhere else, so the page opens from disk and travels as one file.

Output is deterministic (no timestamp; Pillow's JPEG encoder gives the same bytes for the same
pixels), so rerunning the report on the same models rewrites the same page.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from teachclip.core.config import ReportConfig
from teachclip.stages.report.gallery import CATEGORIES, Flagged, Gallery, Query, Retrieved

STYLE = """
:root { --teacher: #6f6f6f; --student: #1f77b4; --gt: #2ca02c; --ink: #1d1d1f; --muted: #6e6e73; --line: #e3e3e8; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f5f7; color: var(--ink); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 24px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 6px; padding-top: 8px; border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 22px 0 8px; color: var(--muted); font-weight: 600; }
p.lead, p.note { color: var(--muted); margin: 4px 0 10px; max-width: 900px; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #ececf0; padding: 1px 4px; border-radius: 4px; }
.legend { display: flex; gap: 18px; flex-wrap: wrap; margin: 10px 0 4px; font-size: 13px; }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 6px; vertical-align: -1px; background: var(--c); }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px 16px; margin: 12px 0; }
.caption { font-size: 17px; font-weight: 600; margin: 0; }
.caption q { quotes: "\\201C" "\\201D"; }
.meta { color: var(--muted); font-size: 12.5px; margin: 2px 0 10px; }
.meta b { color: var(--ink); }
.tag { display: inline-block; font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; padding: 2px 7px; border-radius: 10px; margin-right: 8px; vertical-align: 2px; background: #ececf0; color: var(--muted); }
.tag.teacher { background: #ebebeb; color: #444; } .tag.student { background: #e1eef8; color: #14527f; }
.tag.both { background: #e3f3e3; color: #1f6f1f; } .tag.neither { background: #fbeaea; color: #8a2a2a; }
.frames { display: flex; gap: 6px; flex-wrap: wrap; margin-bottom: 12px; }
figure { margin: 0; width: 84px; }
figure img { display: block; width: 84px; height: auto; border-radius: 4px; border: 2px solid var(--gt); image-rendering: auto; }
.bar { display: flex; align-items: center; gap: 4px; height: 14px; font-size: 10.5px; color: var(--muted); font-variant-numeric: tabular-nums; }
.bar i { display: block; height: 7px; border-radius: 2px; background: var(--c); min-width: 1px; }
.bar b { font-weight: 500; width: 30px; text-align: right; flex: none; }
.bar .track { flex: 1; }
.tops { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.tops h4 { margin: 0 0 6px; font-size: 13px; }
.tops h4.teacher { color: var(--teacher); } .tops h4.student { color: var(--student); }
ol { list-style: none; margin: 0; padding: 0; }
li.hit { display: grid; grid-template-columns: 22px auto 1fr auto; align-items: center; gap: 8px; padding: 3px 6px; border-radius: 6px; border: 2px solid transparent; }
li.hit.gt { border-color: var(--gt); background: #f1faf1; }
li.hit .rank { font-weight: 700; color: var(--muted); text-align: right; }
li.hit img { display: block; height: 44px; width: auto; border-radius: 3px; }
li.hit .vid { font: 12px ui-monospace, Menlo, monospace; color: var(--muted); overflow: hidden; text-overflow: ellipsis; }
li.hit.gt .vid { color: #1f6f1f; font-weight: 700; }
li.hit .score { font-variant-numeric: tabular-nums; font-size: 12.5px; }
.missed { font-size: 12px; color: var(--muted); margin: 4px 6px 0; }
.missed b { color: #1f6f1f; }
.flag { display: grid; grid-template-columns: auto 1fr; gap: 14px; align-items: start; }
.flag img { display: block; height: 64px; width: auto; border-radius: 4px; }
.flag ul { margin: 4px 0 0; padding-left: 18px; color: var(--muted); font-size: 13px; }
nav { font-size: 13px; margin: 8px 0 0; } nav a { color: var(--student); margin-right: 14px; }
"""


def data_uri(image: np.ndarray, config: ReportConfig, height: int | None = None) -> str:
    """A JPEG ``data:`` URI of uint8 [H, W, 3] pixels, shrunk (never enlarged) to ``thumbnail_px``
    on its longest side, or to ``height`` rows for a strip."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    if height is not None:
        if picture.height > height:
            picture = picture.resize((max(1, round(picture.width * height / picture.height)), height), Image.LANCZOS)
    else:
        picture.thumbnail((config.thumbnail_px, config.thumbnail_px), Image.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=config.jpeg_quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def strip(frames: np.ndarray, count: int) -> np.ndarray | None:
    """``count`` frames spread evenly over the video, side by side with a 2 px white gap."""
    if len(frames) == 0:
        return None
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
    height, width = frames.shape[1:3]
    canvas = np.full((height, len(picks) * (width + 2) - 2, 3), 255, dtype=np.uint8)
    for slot, index in enumerate(picks):
        canvas[:, slot * (width + 2) : slot * (width + 2) + width] = frames[index]
    return canvas


class Page:
    """Builds the page; a strip image used several times is encoded once and repeated."""

    def __init__(self, gallery: Gallery, config: ReportConfig):
        self.gallery, self.config = gallery, config
        self._strips: dict[tuple[str, int], str | None] = {}

    def strip_uri(self, video_id: str, count: int, height: int) -> str | None:
        key = (video_id, count)
        if key not in self._strips:
            pixels = strip(self.gallery.frames[video_id], count)
            self._strips[key] = None if pixels is None else data_uri(pixels, self.config, height=height)
        return self._strips[key]

    def strip_img(self, video_id: str, count: int, height: int, alt: str) -> str:
        uri = self.strip_uri(video_id, count, height)
        return f'<img src="{uri}" alt="{esc(alt)}">' if uri else '<span class="vid">(not decoded)</span>'

    def render(self) -> str:
        g = self.gallery
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>teachclip gallery</title>",
            f"<style>{STYLE}</style></head><body><main>",
            "<h1>What the best teacher and the best student retrieve</h1>",
            f'<p class="lead">{g.split.capitalize()} split: {g.texts} queries over {g.videos} videos. Best teacher '
            f"<b>{esc(g.teacher.run)}</b> (t2v R@1 {g.teacher.t2v_R1:.1f}) against best student "
            f"<b>{esc(g.student.run)}</b> (t2v R@1 {g.student.t2v_R1:.1f}). For each query: the ground-truth "
            f"video's frames with the teacher's frame relevance for the caption and the student's AFA weight "
            f"under each frame, then each model's top {self.config.top_k}.</p>",
            '<div class="legend"><span style="--c: var(--teacher)">teacher: frame relevance '
            "(softmax over the frames)</span><span style=\"--c: var(--student)\">student: AFA weight</span>"
            '<span style="--c: var(--gt)">ground-truth video</span></div>',
            '<nav><a href="#queries">Queries</a>'
            + ('<a href="#audit">Flagged captions</a>' if g.audit is not None else "") + "</nav>",
            '<h2 id="queries">Queries</h2>',
            '<p class="note">Selection (fixed by the two models\' ranks of the ground truth): '
            + "; ".join(f"<b>{name}</b>: {esc(rule)} ({g.counts[name]} of {g.texts})" for name, rule in CATEGORIES)
            + ". Shown within each: the largest disagreements first (docs/guide.md, Reading the gallery).</p>",
        ]
        for name, rule in CATEGORIES:
            queries = [q for q in g.queries if q.category == name]
            if queries:
                parts.append(f"<h3>{esc(rule.capitalize())}</h3>")
                parts.extend(self.query(q) for q in queries)
        if not g.queries:
            parts.append('<p class="note">No queries selected (report.gallery_queries is 0).</p>')
        if g.audit is not None:
            parts.append(self.audit())
        parts.append("</main></body></html>\n")
        return "\n".join(parts)

    def query(self, q: Query) -> str:
        g = self.gallery
        frames = g.frames[q.video_id]
        signals = (q.teacher_relevance or []) + (q.student_weights or [])
        top = max(signals, default=1.0) or 1.0  # both rows share one scale: the bars compare
        figures = []
        for index, frame in enumerate(frames):
            bars = "".join(
                bar(values[index], top, colour, label)
                for values, colour, label in ((q.teacher_relevance, "var(--teacher)", "teacher frame relevance"),
                                              (q.student_weights, "var(--student)", "student AFA weight"))
                if values is not None and index < len(values))
            figures.append(f'<figure><img src="{data_uri(frame, self.config)}" alt="frame {index + 1} of '
                           f'{esc(q.video_id)}">{bars}</figure>')
        notes = []
        if q.teacher_relevance is None:
            notes.append(f"{esc(g.teacher.run)} has no frame relevance")
        if q.student_weights is None:
            notes.append(f"{esc(g.student.run)} has no AFA block (it averages its frames)")
        return (
            f'<section class="card"><p class="caption"><span class="tag {q.category}">{q.category}</span><q>{esc(q.text)}</q></p>'
            f'<div class="meta">caption <code>{esc(q.caption_id)}</code> · ground truth <code>{esc(q.video_id)}</code>'
            f" · its rank: teacher <b>{q.teacher_rank}</b>, student <b>{q.student_rank}</b>"
            + (f" · {'; '.join(notes)}" if notes else "") + "</div>"
            f'<div class="frames">{"".join(figures)}</div>'
            f'<div class="tops">{self.ranking(q, "teacher", q.teacher_top, q.teacher_rank, q.teacher_score)}'
            f'{self.ranking(q, "student", q.student_top, q.student_rank, q.student_score)}</div></section>'
        )

    def ranking(self, q: Query, role: str, hits: list[Retrieved], gt_rank: int, gt_score: float) -> str:
        run = self.gallery.teacher.run.removeprefix("teacher-") if role == "teacher" else self.gallery.student.run
        items = "".join(
            f'<li class="hit{" gt" if hit.ground_truth else ""}"><span class="rank">{rank}</span>'
            f"{self.strip_img(hit.video_id, self.config.strip_frames, 44, hit.video_id)}"
            f'<span class="vid">{esc(hit.video_id)}{" ✓ ground truth" if hit.ground_truth else ""}</span>'
            f'<span class="score">{hit.score:.3f}</span></li>'
            for rank, hit in enumerate(hits, start=1))
        missed = "" if any(hit.ground_truth for hit in hits) else (
            f'<p class="missed">ground truth <b>{esc(q.video_id)}</b> at rank <b>{gt_rank}</b> '
            f"(score {gt_score:.3f})</p>")
        return f'<div><h4 class="{role}">{role} {esc(run)}: top {len(hits)}</h4><ol>{items}</ol>{missed}</div>'

    def audit(self) -> str:
        g, summary = self.gallery, self.gallery.audit or {}
        parts = [
            '<h2 id="audit">Captions the audit flagged</h2>',
            f'<p class="note"><code>teach audit-captions</code> flagged <b>{summary.get("flagged", len(g.flagged))}</b>'
            f' of {summary.get("captions", "?")} training captions: the teachers together (mean of row-standardised '
            f'similarities) rank the caption\'s own video outside their top {summary.get("top_k", "?")} of '
            f'{summary.get("videos", "?")}. Shown: the {len(g.flagged)} ranked worst, with the video they describe '
            "and its other captions.</p>",
        ]
        if not g.flagged:
            parts.append('<p class="note">No caption was flagged.</p>')
        for flagged in g.flagged:
            parts.append(self.flagged(flagged))
        return "\n".join(parts)

    def flagged(self, f: Flagged) -> str:
        ranks = ", ".join(f"{esc(name)} {rank}" for name, rank in f.ranks.items())
        others = "".join(f"<li>{esc(text)}</li>" for text in f.other_captions)
        return (
            f'<section class="card flag">{self.strip_img(f.video_id, 6, 64, f.video_id)}<div>'
            f'<p class="caption"><q>{esc(f.text)}</q></p>'
            f'<div class="meta">caption <code>{esc(f.caption_id)}</code> · video <code>{esc(f.video_id)}</code> · '
            f"rank of its video: teachers' mean <b>{f.rank_mean}</b> ({ranks})</div>"
            + (f"<div class=\"meta\">the video's other captions:</div><ul>{others}</ul>" if others else "")
            + "</div></section>"
        )


def bar(value: float, top: float, colour: str, label: str) -> str:
    width = 100.0 * value / top
    return (f'<div class="bar" style="--c: {colour}" title="{label} {value:.3f}"><span class="track">'
            f'<i style="width: {width:.1f}%"></i></span><b>{value:.2f}</b></div>')


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_gallery(gallery: Gallery, config: ReportConfig) -> str:
    return Page(gallery, config).render()
