import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import Params, StudentVariant
from teachclip.stages.report import ReportError, report


def write_metrics(directory: Path, name: str, r1: float) -> None:
    metrics = {"t2v_R1": r1, "t2v_R5": r1 + 10, "t2v_R10": r1 + 20, "t2v_MdR": 5.0, "v2t_R1": r1 - 1,
               "texts": 100, "videos": 100}
    (directory / f"{name}.json").write_text(json.dumps(metrics))


def test_report_aggregates_seeds_and_orders_rows(tmp_path: Path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    write_metrics(metrics, "teacher-xpool", 30.0)
    for seed, r1 in enumerate([10.0, 12.0, 14.0]):
        write_metrics(metrics, f"both-s{seed}", r1)
        write_metrics(metrics, f"meanP-s{seed}", r1 - 5)
    params = Params(students={"meanP": StudentVariant(description="baseline"), "both": StudentVariant()})
    rows = report(metrics, tmp_path / "reports", params)
    assert [row.name for row in rows] == ["xpool", "meanP", "both"]
    summary = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert summary["both"]["t2v_R1_mean"] == pytest.approx(12.0)
    assert summary["both"]["t2v_R1_std"] == pytest.approx(2.0)  # sample std of 10, 12, 14
    assert summary["xpool"]["runs"] == 1
    table = (tmp_path / "reports" / "results.md").read_text()
    assert "| both | student | 3 | 12.0 ± 2.0 |" in table
    assert "- **meanP**: baseline" in table
    assert (tmp_path / "reports" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_report_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ReportError, match="no metrics files"):
        report(tmp_path, tmp_path / "out", Params())
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ReportError, match="broken.json"):
        report(tmp_path, tmp_path / "out", Params())
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ReportError, match="missing metric"):
        report(tmp_path, tmp_path / "out", Params())
    result = CliRunner().invoke(app, ["--params", str(tmp_path / "none.yaml"), "report",
                                      "--metrics", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1


def test_report_gap_closed_and_measured_query_cost(tmp_path: Path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name, r1, ms in (("teacher-xpool", 30.0, 40.0), ("meanP-s0", 10.0, 0.5), ("both-s0", 20.0, 0.5)):
        write_metrics(metrics, name, r1)
        document = json.loads((metrics / f"{name}.json").read_text()) | {"score_ms_per_query": ms}
        (metrics / f"{name}.json").write_text(json.dumps(document))
    params = Params(students={"meanP": StudentVariant(), "both": StudentVariant()})
    report(metrics, tmp_path / "reports", params)
    table = (tmp_path / "reports" / "results.md").read_text()
    # (20 - 10) / (30 - 10) on R@1 and on R@5 (R@5 = R@1 + 10 here)
    assert "| both | student | 1 | 20.0 | 30.0 | 40.0 | 5.0 | 19.0 | 50% / 50% | 0.5 ms (1.0x) |" in table
    assert "| xpool | teacher | 1 | 30.0 | 40.0 | 50.0 | 5.0 | 29.0 |  | 40 ms (80.0x) |" in table
    assert json.loads((tmp_path / "reports" / "results.json").read_text())["xpool"]["score_ms_per_query"] == 40.0
