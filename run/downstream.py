"""Stage drivers of the main job after training: rebalancing plan -> synthetic patients -> realism -> debiasing
arms -> report. Each takes the RunState (run/state.py) and returns its output, which marks the stage done.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from classify.experiment import labels_of, run_experiment
from classify.plots import composition_plot, subgroup_bar_plot
from classify.report import composition_section, experiment_section, rare_section, reproduce_section, write_report
from data.atomic import atomic_write_all, atomic_write_bytes
from data.attributes import age_group
from data.json_ready import read_json_object
from data.oracle import oracle_slices
from data.plan_csv import load_plan, save_plan
from data.planner import plan_rebalancing, planning_attributes
from data.prevalence import prevalence_subsample
from data.slices import SliceSet
from ddpm.checkpoint import file_sha256
from ddpm.distributed import resolve_device
from ddpm.images import save_grid
from evaluation.image_sets import load_sample_folder
from evaluation.report import evaluate, write_outputs
from evaluation.training_set import evaluate_training_set, write_training_set
from run.loader import to_dict
from run.pipeline import load_pipeline
from run.generators import generator_folders
from run.prepare_data import PreparedData, fresh_test_set
from run.provenance import verify_stage
from run.samples import SampleRequest, checkpoint_record, plan_requests, run_requests
from run.state import RunState
from run.train_vae import load_vae, reconstruct


def _generate(cfg, ckpts: dict, requests: list[SampleRequest], out_dir: Path, overwrite: bool = False) -> None:
    pipe = load_pipeline(ckpts["vae"], ckpts["ldm"], ckpts.get("controlnet"), device=resolve_device(cfg.device))
    run_requests(pipe, requests, out_dir, cfg.sample, checkpoint_record(ckpts), overwrite=overwrite)


def _sample_set(out_dir: Path, ids: list[str], attributes: pd.DataFrame) -> SliceSet:
    """Generated samples in `ids` order as a SliceSet carrying the prompted (planned) attributes."""
    loaded = load_sample_folder(out_dir, progress=False)
    position = {sid: i for i, sid in enumerate(loaded.subject_ids)}
    order = [position[i] for i in ids]
    return SliceSet(loaded.images[order], loaded.masks[order], ids, np.zeros(len(ids)), attributes.reset_index(drop=True))


def at_prevalence(slices: SliceSet, prevalence: float | None, positive: tuple, seed: int, where: str) -> SliceSet:
    """The slices of a subject subsample whose positive share is `prevalence` (None: all of them)."""
    if prevalence is None:
        return slices
    return slices.select(prevalence_subsample(slices.subject_ids, labels_of(slices, positive), prevalence, seed, where))


def real_split(cfg, data: PreparedData, side: str) -> SliceSet:
    """data.train or data.test at experiment.{side}_prevalence: what the plan's donors and the arms see."""
    exp = cfg.experiment
    return at_prevalence(getattr(data, side), getattr(exp, f"{side}_prevalence"), tuple(exp.positive),
                         cfg.data.split_seed, f"experiment.{side}_prevalence")


def plan_and_generate(cfg, data: PreparedData, ckpts: dict, run_dir: Path, overwrite: bool) -> Path:
    """Write plan.csv for the under-represented subgroups and generate its samples (arm c's extra patients);
    samples.json, written last, marks both done."""
    plan_path = run_dir / "plan.csv"
    # Mask donors are the training slices only, after data.rare: a rare group's synthetic cases take the geometry
    # of its remaining training subjects (reused masks jittered). Another group's masks would give the prompted
    # condition the wrong anatomy (the label is in the geometry: a dilated LV, a thinned infarcted wall), and the
    # dropped or test subjects are the ones the data is pretending not to have.
    # Under experiment.train_prevalence they are the subjects arm (a) keeps: no arm sees a patient another drops.
    train = real_split(cfg, data, "train")
    save_plan(plan_rebalancing(planning_attributes(train), cfg.plan, seed=cfg.data.split_seed), plan_path)
    plan = load_plan(plan_path)
    if len(plan):
        _generate(cfg, ckpts, plan_requests(plan, cfg, slices=train), run_dir / "samples", overwrite)
    manifest = {"plan": str(plan_path), "plan_sha256": file_sha256(plan_path), "n_samples": len(plan)}
    atomic_write_bytes(run_dir / "samples.json", json.dumps(manifest, indent=1).encode())
    return run_dir / "samples.json"


def load_planned(run_dir: Path) -> tuple[pd.DataFrame, SliceSet | None]:
    """plan.csv and its generated samples as a SliceSet carrying the planned attributes (None if empty)."""
    verify_stage(run_dir, "plan")  # samples are paired with plan rows by id: the plan must be the one they came from
    plan = load_plan(run_dir / "plan.csv")
    if len(plan) == 0:
        return plan, None
    attributes = plan[["sample_id", "sex", "age", "bmi", "health", "prompt"]].rename(columns={"sample_id": "subject_id"})
    return plan, _sample_set(run_dir / "samples", list(plan["sample_id"]), attributes)


def mirror_of_test(cfg, data: PreparedData, ckpts: dict, run_dir: Path, overwrite: bool) -> tuple[SliceSet, list[str]]:
    """evaluation.samples_per_mask generated images per held-out test slice, from its own prompt and masks:
    realism and control fidelity are then measured on patients no generative stage saw, at the test set's
    composition. Also returns the held-out subject behind each generated image."""
    k, n = int(cfg.evaluation.samples_per_mask), len(data.test)
    ids = [f"mirror-{i:05d}" if k == 1 else f"mirror-{i:05d}-{s}" for s in range(k) for i in range(n)]
    rows = [i for _ in range(k) for i in range(n)]
    requests = [SampleRequest(sid, data.test.prompts[i], 10_000 + j, data.test.masks[i],
                              {"kind": "test", "subject_id": data.test.subject_ids[i]})
                for j, (sid, i) in enumerate(zip(ids, rows))]
    _generate(cfg, ckpts, requests, run_dir / "mirror", overwrite)
    attributes = data.test.attributes.iloc[rows].reset_index(drop=True).assign(subject_id=ids)
    return _sample_set(run_dir / "mirror", ids, attributes), [data.test.subject_ids[i] for i in rows]


def subgroup_grids(synthetic: SliceSet, path: Path, per_group: int = 4) -> Path:
    """One row per planned subgroup (health x sex x age group): mask ED, ES | generated ED, ES."""
    frame = synthetic.attributes.reset_index(drop=True)
    # a missing sex or age (ACDC) is a group of its own, not one groupby drops
    ages = [None if pd.isna(a) else age_group(float(a)) for a in frame["age"]]
    frame = frame.assign(age_group=ages).fillna({"sex": "unknown", "age_group": "unknown"})
    keep = []
    for _, group in frame.groupby(["health", "sex", "age_group"], sort=True):
        keep += list(group.index[:per_group])
    return save_grid(path, synthetic.images[keep], synthetic.masks[keep], [synthetic.prompts[i] for i in keep],
                     ncols=per_group)


def plan_stage(run: RunState) -> Path:
    return plan_and_generate(run.cfg, run.data, run.checkpoints, run.dir, "plan" in run.force)


def evaluation_stage(run: RunState) -> Path:
    """Realism and control fidelity of the mirror samples; they resume inside run_requests."""
    cfg, data, run_dir = run.cfg, run.data, run.dir
    metrics_path = run_dir / "evaluation" / "metrics.json"
    mirror, sources = mirror_of_test(cfg, data, run.checkpoints, run_dir, "evaluation" in run.force)
    pixel_mm = cfg.data.preprocess.crop_mm / cfg.data.preprocess.size
    device = resolve_device(cfg.device)
    reconstructed = reconstruct(load_vae(run.checkpoints["vae"], device)[0], data.test.images)
    metrics = evaluate(data.train, data.test, mirror, cfg.evaluation, spacing_mm=pixel_mm, device=device,
                       fake_subjects=sources, reconstructed=reconstructed)
    evaluate_plan_samples(run)  # before metrics.json, which marks the stage done
    write_outputs(metrics, metrics_path, run_dir / "evaluation" / "metrics.md", run_dir / "evaluation" / "metrics.png")
    return metrics_path


def oracle_subjects(cfg, plan: pd.DataFrame, run_dir: Path) -> SliceSet | None:
    """The oracle arm's extra REAL phantom subjects: one per plan row, with its cell's attributes (None on a real
    cohort, where none can be drawn, and when the arm is off or the plan empty)."""
    if cfg.data.root is not None or "oracle" not in cfg.experiment.arms or len(plan) == 0:
        return None
    return oracle_slices(run_dir / "cohort-oracle", plan[["sex", "age", "bmi", "health"]], cfg.data.synthetic_seed,
                         cfg.data.preprocess)


def fid_reference(cfg, data: PreparedData, run_dir: Path) -> tuple[SliceSet, str]:
    """The real side of the training-set audit's FIDs and its description (evaluation.training_set.fid_reference).

    The fresh test cohort when one is configured (fresh_test.n subjects, 2,000 in tiny-stats, one image each): enough
    for n = 500 distinct images a side and a bound split by subject within it, none drawn with replacement. No stage trains on it and its ids are disjoint
    from the training cohort's (the plan's donors). The audit only measures realism: no classifier, threshold or
    model selection reads it, so the experiment's final numbers on that cohort are untouched. All of it is used
    (experiment.test_prevalence subsamples the experiment's copy only). Otherwise the held-out test set."""
    choice = cfg.evaluation.training_set.fid_reference
    if choice == "fresh" or (choice == "auto" and cfg.fresh_test.n):
        fresh = fresh_test_set(cfg.data, cfg.fresh_test, run_dir, progress=False)
        return fresh, f"fresh test cohort (fresh_test, seed {cfg.fresh_test.seed})"
    return data.test, "held-out test set"


def evaluate_plan_samples(run: RunState) -> Path:
    """The plan's samples (the synthetic images that go into training) evaluated -> evaluation/training_set.json
    and its report section training_set.md; a skip says why in both."""
    cfg, out = run.cfg.evaluation.training_set, run.dir / "evaluation"
    plan, synthetic = load_planned(run.dir)
    if synthetic is None or not cfg.enabled:
        reason = "no synthetic samples were planned" if synthetic is None else "evaluation.training_set.enabled is false"
        result = {"skipped": reason}
        atomic_write_all({out / "training_set.json": (json.dumps(result) + "\n").encode(),
                          out / "training_set.md": f"Skipped: {reason}.\n".encode()})
        return out / "training_set.json"
    print(f"[evaluation] the plan's {len(synthetic)} synthetic training images: recovery, memorisation, "
          "discriminator, FID", flush=True)
    result = evaluate_training_set(run.data.train, run.data.test, synthetic, plan, cfg, run.cfg.plan.keys,
                                   run.cfg.experiment.positive, resolve_device(run.cfg.device),
                                   reference=fid_reference(run.cfg, run.data, run.dir))
    write_training_set(result, out / "training_set.json", out / "training_set.md")
    return out / "training_set.json"


def experiment_stage(run: RunState) -> Path:
    """The debiasing arms, trained on real (+ the plan's synthetic) slices, scored on the held-out test set; the
    real training and test subjects are first subsampled to experiment.train_prevalence / test_prevalence. A
    synthetic sample's mask donor (plan.csv mask_subject_id) keeps it on its donor's side of every split."""
    cfg, run_dir = run.cfg, run.dir
    plan = load_planned(run_dir)[0]
    # one synthetic set per separately trained generator (the run's own first), all from the same plan
    synthetic = [s for s in (load_planned(folder)[1] for folder in generator_folders(cfg, run_dir)) if s is not None]
    donors = dict(zip(plan["sample_id"].astype(str), plan["mask_subject_id"].astype(str)))
    exp = cfg.experiment
    test = fresh_test_set(cfg.data, cfg.fresh_test, run_dir) if cfg.fresh_test.n else run.data.test
    test = at_prevalence(test, exp.test_prevalence, tuple(exp.positive), cfg.data.split_seed, "experiment.test_prevalence")
    result = run_experiment(real_split(cfg, run.data, "train"), test, synthetic, exp, cfg.classifier,
                            cfg.classifier_train, donors=donors, oracle=oracle_subjects(cfg, plan, run_dir))
    result.save(run_dir / "experiment")
    subgroup_bar_plot(result, run_dir / "experiment" / "subgroup_balanced_accuracy.png")
    return run_dir / "experiment" / "experiment.json"


def write_main_report(run: RunState) -> Path:
    """report.md: composition before/after, samples per subgroup, realism, debiasing arms, timings, how to rerun."""
    cfg, data, run_dir, commands, timings = run.cfg, run.data, run.dir, run.commands, run.timings
    plan, synthetic = load_planned(run_dir)
    before, groups = data.train.attributes, cfg.experiment.groups
    after = pd.concat([before, synthetic.attributes]) if synthetic is not None else before
    composition_plot(before, after, run_dir / "composition.png", cfg.experiment.positive, groups)
    grids = "no synthetic samples were planned"
    if synthetic is not None:
        subgroup_grids(synthetic, run_dir / "samples_by_subgroup.png")
        grids = (f"{len(synthetic)} synthetic patients; four per health x sex x age group "
                 "(mask ED, ES | generated ED, ES):"
                 "\n\n![samples](samples_by_subgroup.png)")
    experiment = read_json_object(run_dir / "experiment" / "experiment.json", "experiment results")
    timing_rows = "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in timings.items())
    sections = {} if data.rare is None else {"Rare group (data.rare)": rare_section(data.rare, plan)}
    sections |= {
        "Cohort composition before/after rebalancing":
            composition_section(before, after, cfg.experiment.positive, groups) + "\n\n![composition](composition.png)",
        "Synthetic patients per subgroup": grids,
        "Realism and control fidelity (generated from held-out test masks and prompts)":
            _demote((run_dir / "evaluation" / "metrics.md").read_text()) + "\n\n![evaluation](evaluation/metrics.png)",
        "The synthetic training images (the plan's samples) evaluated": _training_set_text(run_dir),
        "Debiasing: primary endpoint, arms, secondary comparisons":
            experiment_section(experiment, "experiment/subgroup_balanced_accuracy.png", data.rare),
        "Run time (seconds per stage, as measured when it ran; 2 CPU cores)":
            "| stage | seconds |\n|---|---|\n" + timing_rows if timings else "",
        "Reproduce": reproduce_section(commands, yaml.safe_dump(to_dict(cfg), sort_keys=False)),
    }
    return write_report(run_dir / "report.md", sections)


def _training_set_text(run_dir: Path) -> str:
    path = run_dir / "evaluation" / "training_set.md"
    return path.read_text() if path.is_file() else "not evaluated (a run from before this section: --force evaluation)"


def _demote(markdown: str) -> str:
    """Nest a standalone Markdown document's headings under a report section (# -> ###)."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())
