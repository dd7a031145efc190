"""The DVC pipelines: every stage lists the code it runs (so that editing it reruns the stage), and the
MSR-VTT pipeline is a DVC project of its own whose paths and params fit its params file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import grimp
import pytest
import yaml

from teachclip.core.config import load_params

REPO = Path(__file__).resolve().parents[1]
PIPELINES = {"demo": REPO / "dvc.yaml", "msrvtt": REPO / "pipelines" / "msrvtt" / "dvc.yaml"}
# the module each `teach` command runs
COMMANDS = {
    "demo-data": "teachclip.stages.demo_data", "prepare": "teachclip.datasets", "decode": "teachclip.stages.decode",
    "pretrain-backbone": "teachclip.stages.pretrain_backbone", "encode-frames": "teachclip.stages.encode_frames",
    "train-teacher": "teachclip.stages.train_teacher", "extract-teachers": "teachclip.stages.extract_teachers",
    "train-student": "teachclip.stages.train_student", "evaluate": "teachclip.stages.evaluate",
    "report": "teachclip.stages.report", "audit-captions": "teachclip.tools.audit_captions",
}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("teachclip")


def stages(pipeline: Path):
    for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
        body = stage.get("do", stage)
        yield name, body


def module_file(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize("pipeline", PIPELINES, ids=list(PIPELINES))
def test_every_stage_lists_the_code_it_runs(pipeline, graph):
    path = PIPELINES[pipeline]
    checked = 0
    for name, stage in stages(path):
        command = re.search(r"teach (?:--params \S+ )?([a-z-]+)", stage["cmd"]).group(1)
        root = COMMANDS[command]
        modules = {root} | graph.find_upstream_modules(root)
        if module_file(root).name == "__init__.py":  # a stage package: every module in it
            modules |= {m for m in graph.modules if m.startswith(root + ".")}
            modules |= set().union(*(graph.find_upstream_modules(m) for m in list(modules)))
        listed = [(path.parent / dep).resolve() for dep in stage["deps"] if "teachclip" in dep]
        for module in modules:
            file = module_file(module)
            assert any(file == dep or dep in file.parents for dep in listed), (
                f"{path.relative_to(REPO)} stage {name!r} runs {module} but does not list "
                f"{file.relative_to(REPO)} (or a folder of it) in its deps")
        checked += 1
    assert checked >= (9 if pipeline == "demo" else 5)


def test_msrvtt_pipeline_is_its_own_dvc_project_and_fits_its_params_file():
    pipeline_path = PIPELINES["msrvtt"]
    assert (pipeline_path.parent / ".dvc" / "config").is_file()  # root `dvc status` does not see it
    pipeline = yaml.safe_load(pipeline_path.read_text())
    vars_file, _, section = pipeline["vars"][0].partition(":")
    params_path = (pipeline_path.parent / vars_file).resolve()
    params = yaml.safe_load(params_path.read_text())
    used = set(re.findall(r"\$\{paths\.(\w+)\}", pipeline_path.read_text()))
    assert section == "paths" and used and used <= set(params["paths"]), used - set(params["paths"])
    for name, stage in pipeline["stages"].items():
        assert "wdir" not in stage, name  # paths are relative to the project folder
        assert f"--params {vars_file}" in stage["cmd"], name
        for entry in stage.get("params", []):
            for file, sections in entry.items():
                assert (pipeline_path.parent / file).resolve() == params_path
                assert set(sections) <= set(params), set(sections) - set(params)
    load_params(params_path)  # and the file itself validates


@pytest.mark.parametrize("folder", [REPO, REPO / "pipelines" / "msrvtt"], ids=["demo", "msrvtt"])
def test_dvc_reads_the_pipeline(folder):
    result = subprocess.run(["dvc", "stage", "list"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "evaluate" in result.stdout


# the commands whose runs log with teachclip.training.log.MetricsLog
LOGGING_COMMANDS = {"pretrain-backbone", "train-teacher", "train-student"}


@pytest.mark.parametrize("pipeline", PIPELINES, ids=list(PIPELINES))
def test_training_stages_declare_the_log_files_their_runs_write(pipeline):
    """A metric or plot a stage declares but its run never writes fails `dvc repro` only after the
    training has run (the demo's candidate-taught students once declared metrics.tsv, the log's old name)."""
    from teachclip.training.log import DVCLIVE_DIR, PLOTS, SUMMARY

    checked = 0
    for name, stage in stages(PIPELINES[pipeline]):
        command = re.search(r"teach (?:--params \S+ )?([a-z-]+)", stage["cmd"]).group(1)
        if command not in LOGGING_COMMANDS:
            continue
        out = re.search(r"--out (\S+)", stage["cmd"]).group(1)
        runs = {out.replace("{seed}", seed) for seed in re.findall(r"--seed (\d+)", stage["cmd"])} or {out}
        expected = {f"{run}/{DVCLIVE_DIR}/{SUMMARY}" for run in runs}
        assert {next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])} == expected, name
        expected = {f"{run}/{DVCLIVE_DIR}/{PLOTS.as_posix()}" for run in runs}
        assert {next(iter(p)) if isinstance(p, dict) else p for p in stage.get("plots", [])} == expected, name
        checked += 1
    assert checked >= (3 if pipeline == "demo" else 1)
