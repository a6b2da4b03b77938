"""The main job after training: rebalancing plan -> synthetic patients -> realism -> debiasing arms -> report.

Each step writes its output under the run folder and is skipped when that output exists (unless forced), so an
interrupted `train.py --stage all` resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from classify.experiment import run_experiment
from classify.plots import composition_plot, subgroup_bar_plot
from classify.report import composition_section, experiment_section, reproduce_section, write_report
from controlnet.batch import SampleRequest, checkpoint_record, plan_requests, run_requests
from data.planner import load_plan, plan_rebalancing, planning_attributes, save_plan
from data.prepare import PreparedData
from data.slices import SliceSet
from ddpm.config import to_dict
from ddpm.images import save_grid
from ddpm.pipeline import load_pipeline
from ddpm.run_config import resolve_device
from evaluation.image_sets import load_sample_folder
from evaluation.report import evaluate, write_outputs

DOWNSTREAM = ("plan", "samples", "evaluation", "experiment")


def _generate(cfg, ckpts: dict, requests: list[SampleRequest], out_dir: Path) -> None:
    pipe = load_pipeline(ckpts["vae"], ckpts["ldm"], ckpts.get("controlnet"), device=resolve_device(cfg.device))
    run_requests(pipe, requests, out_dir, cfg.sample, checkpoint_record(ckpts))


def _sample_set(out_dir: Path, ids: list[str], attributes: pd.DataFrame) -> SliceSet:
    """Generated samples in `ids` order as a SliceSet carrying the prompted (planned) attributes."""
    loaded = load_sample_folder(out_dir, progress=False)
    position = {sid: i for i, sid in enumerate(loaded.subject_ids)}
    order = [position[i] for i in ids]
    return SliceSet(loaded.images[order], loaded.masks[order], ids, np.zeros(len(ids)), attributes.reset_index(drop=True))


def synthetic_patients(cfg, data: PreparedData, ckpts: dict, run_dir: Path, force: set) -> tuple[pd.DataFrame, SliceSet]:
    """The plan for the under-represented subgroups and its generated samples (arm c's extra patients)."""
    plan_path = run_dir / "plan.csv"
    if "plan" in force or not plan_path.is_file():
        save_plan(plan_rebalancing(planning_attributes(data.train), cfg.plan, seed=cfg.data.split_seed), plan_path)
    plan = load_plan(plan_path)
    if len(plan) == 0:
        return plan, None
    _generate(cfg, ckpts, plan_requests(plan, cfg, slices=data.train), run_dir / "samples")
    attributes = plan[["sample_id", "sex", "age", "bmi", "health", "prompt"]].rename(columns={"sample_id": "subject_id"})
    return plan, _sample_set(run_dir / "samples", list(plan["sample_id"]), attributes)


def mirror_of_test(cfg, data: PreparedData, ckpts: dict, run_dir: Path) -> SliceSet:
    """One generated image per held-out test slice, from its own prompt and masks: realism and control
    fidelity are then measured on patients no generative stage saw, at the test set's composition."""
    ids = [f"mirror-{i:05d}" for i in range(len(data.test))]
    requests = [SampleRequest(sid, prompt, 10_000 + i, data.test.masks[i], {"kind": "test", "subject_id": sub})
                for i, (sid, prompt, sub) in enumerate(zip(ids, data.test.prompts, data.test.subject_ids))]
    _generate(cfg, ckpts, requests, run_dir / "mirror")
    return _sample_set(run_dir / "mirror", ids, data.test.attributes.assign(subject_id=ids))


def subgroup_grids(synthetic: SliceSet, path: Path, per_group: int = 4) -> Path:
    """One row per planned subgroup (health, sex, age decade, BMI category): mask | generated ED, ES."""
    frame = synthetic.attributes.reset_index(drop=True)
    rows = []
    for _, group in frame.groupby("prompt", sort=True):
        rows += list(group.index[:per_group]) + [None] * (per_group - min(per_group, len(group)))
    keep = [i for i in rows if i is not None]
    return save_grid(path, synthetic.images[keep], synthetic.masks[keep], [synthetic.prompts[i] for i in keep], ncols=per_group)


def run_downstream(cfg, data: PreparedData, ckpts: dict, run_dir: Path, force: set, commands: list[str],
                   timings: dict, stage: Callable) -> Path:
    """plan -> samples -> evaluation -> experiment -> report.md; `stage(name, output, fn)` skips finished steps."""
    tic = time.perf_counter()
    plan, synthetic = synthetic_patients(cfg, data, ckpts, run_dir, force)
    timings["plan+samples"] = time.perf_counter() - tic
    metrics_path = run_dir / "evaluation" / "metrics.json"

    def evaluation() -> Path:
        mirror = mirror_of_test(cfg, data, ckpts, run_dir)
        pixel_mm = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
        metrics = evaluate(data.train, data.test, mirror, cfg.evaluation, spacing_mm=pixel_mm,
                           device=resolve_device(cfg.device))
        write_outputs(metrics, metrics_path, run_dir / "evaluation" / "metrics.md", run_dir / "evaluation" / "metrics.png")
        return metrics_path

    stage("evaluation", metrics_path, evaluation)
    experiment_path = run_dir / "experiment" / "experiment.json"

    def experiment() -> Path:
        result = run_experiment(data.train, data.test, synthetic, cfg.experiment, cfg.classifier, cfg.classifier_train)
        result.save(run_dir / "experiment")
        subgroup_bar_plot(result, run_dir / "experiment" / "subgroup_balanced_accuracy.png")
        return experiment_path

    stage("experiment", experiment_path, experiment)
    return write_main_report(cfg, data, plan, synthetic, run_dir, commands, timings)


def write_main_report(cfg, data: PreparedData, plan: pd.DataFrame, synthetic, run_dir: Path, commands: list[str],
                      timings: dict) -> Path:
    before = data.train.attributes
    after = pd.concat([before, synthetic.attributes]) if synthetic is not None else before
    composition_plot(before, after, run_dir / "composition.png", cfg.experiment.positive)
    grids = "no synthetic samples were planned"
    if synthetic is not None:
        subgroup_grids(synthetic, run_dir / "samples_by_subgroup.png")
        grids = (f"{len(synthetic)} synthetic patients, one row per planned subgroup (mask ED, ES | generated ED, ES):"
                 "\n\n![samples](samples_by_subgroup.png)")
    experiment = json.loads((run_dir / "experiment" / "experiment.json").read_text())
    timing_rows = "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in timings.items())
    sections = {
        "Cohort composition before/after rebalancing":
            composition_section(before, after, cfg.experiment.positive) + "\n\n![composition](composition.png)",
        "Synthetic patients per subgroup": grids,
        "Realism and control fidelity (generated from held-out test masks and prompts)":
            _demote((run_dir / "evaluation" / "metrics.md").read_text()) + "\n\n![evaluation](evaluation/metrics.png)",
        "Debiasing: per-subgroup balanced accuracy per arm":
            experiment_section(experiment, "experiment/subgroup_balanced_accuracy.png"),
        "Run time (this invocation, seconds; stages skipped as done are not listed)":
            "| stage | seconds |\n|---|---|\n" + timing_rows if timings else "",
        "Reproduce": reproduce_section(commands, yaml.safe_dump(to_dict(cfg), sort_keys=False)),
    }
    return write_report(run_dir / "report.md", sections)


def _demote(markdown: str) -> str:
    """Nest a standalone Markdown document's headings under a report section (# -> ###)."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())
