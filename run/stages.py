"""The stage table and its runner (what `train.py` calls): each stage's output, parent, config sections, function.

A stage whose output exists is skipped unless forced; when one reruns, every later stage is forced (its output
is stale). A trained stage is reused only if its checkpoint was made with this config (its own and its parents'
sections) and on the parent checkpoint now in the run. Under torchrun every process trains the vae, ldm and
controlnet stages; rank 0 alone writes, and runs the later stages and the report.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from data.atomic import atomic_write_bytes
from data.errors import InputError
from data.json_ready import read_json_object
from data.subgroups import format_composition, subgroup_table
from ddpm.checkpoint import file_sha256, load_checkpoint
from ddpm.distributed import barrier, init_from_env
from run.config import RunConfig
from run.generators import train_generators
from run.downstream import evaluation_stage, experiment_stage, plan_stage, write_main_report
from run.loader import to_dict
from run.prepare_data import PreparedData, prepare_data
from run.lock import run_lock
from run.provenance import forget_stage, record_stage, verify_stage
from run.state import RunState
from run.train_controlnet import train_controlnet
from run.train_ldm import train_ldm
from run.train_vae import train_vae


@dataclass(frozen=True)
class Stage:
    name: str
    output: str  # file under the run folder; its presence marks the stage done
    parent: Optional[str]  # the stage whose output this one is built on
    sections: tuple[str, ...]  # config sections the stage reads (checked on reuse for trained stages, with parents')
    fn: Callable[[RunState], Path]

    @property
    def trained(self) -> bool:
        """A model-training stage: its checkpoint records the config it was trained with."""
        return self.output.endswith(".safetensors")


STAGES = (  # in run order; `python train.py --stage X` runs every stage up to X
    Stage("vae", "vae.safetensors", None, ("data", "vae", "vae_train"),
          lambda r: train_vae(r.cfg, r.data.train, r.data.test, r.dir, r.resume)),
    Stage("ldm", "ldm.safetensors", "vae", ("text", "unet", "diffusion", "ldm_train"),
          lambda r: train_ldm(r.cfg, r.data.train, r.checkpoints["vae"], r.dir, r.resume)),
    Stage("controlnet", "controlnet.safetensors", "ldm", ("controlnet", "controlnet_train"),
          lambda r: train_controlnet(r.cfg, r.data.train, r.data.test, r.checkpoints["vae"], r.checkpoints["ldm"],
                                     r.dir, r.resume)),
    Stage("plan", "samples.json", "controlnet", ("plan", "sample"), plan_stage),
    Stage("evaluation", "evaluation/metrics.json", "controlnet", ("sample", "evaluation", "fresh_test"),
          evaluation_stage),
    # after the evaluation, which does not read the extra generators: adding them reruns only the experiment
    Stage("generators", "generators/generators.json", "plan", ("generators",),
          lambda r: train_generators(r, run_stages)),
    Stage("experiment", "experiment/experiment.json", "generators",
          ("classifier", "classifier_train", "experiment", "fresh_test"),
          experiment_stage),
)
STAGE = {stage.name: stage for stage in STAGES}
TRAINED = tuple(stage.name for stage in STAGES if stage.trained)
FORCEABLE = ("data",) + tuple(STAGE)  # `--force data` is accepted; data preparation always runs (it is cached)
BOOKKEEPING = ("log_every", "sample_every", "checkpoint_every", "keep_last", "compile")  # weights do not depend on these


def depends_on(name: str) -> tuple[str, ...]:
    """The config sections a stage's output depends on: its own and its parents'."""
    stage = STAGE[name]
    return (depends_on(stage.parent) if stage.parent else ()) + stage.sections


def check_reusable(cfg: RunConfig, run_dir: Path, stages: tuple[str, ...], force: set[str]) -> None:
    """A finished stage is reused only when trained with this config and on the parent checkpoint now in the run."""
    now, defaults = to_dict(cfg), to_dict(type(cfg)())
    for stage in stages:
        path = run_dir / STAGE[stage].output
        if stage in force or not path.is_file():
            continue
        meta = load_checkpoint(path, expect_stage=stage)[1]
        sections = depends_on(stage)
        # a key the checkpoint's config lacks was added to the code later: that run had the key's default
        then = {section: {**defaults[section], **meta.get("config", {}).get(section, {})} for section in sections}
        changed = [f"{section}.{key}: {then[section][key]!r} -> {value!r}" for section in sections
                   for key, value in now[section].items() if key not in BOOKKEEPING and then[section][key] != value]
        if changed:
            raise InputError(path, f"trained with another config ({'; '.join(changed[:3])}); "
                                   f"use --force {stage} to retrain it, or another --name")
        parent = STAGE[stage].parent
        if parent in force:
            raise InputError(path, f"--force {parent} retrains the {parent} this {stage} was trained on; "
                                   f"add --force {stage}")
        if parent and meta.get(parent) is not None and (run_dir / f"{parent}.safetensors").is_file() and \
                meta[parent] != file_sha256(run_dir / f"{parent}.safetensors"):
            raise InputError(path, f"trained on another {parent} than {run_dir / f'{parent}.safetensors'}; "
                                   f"use --force {stage}")


def prepare(cfg: RunConfig, run_dir: Path, main: bool) -> PreparedData:
    """Data preparation, first: bad data fails before the run folder is written to. Rank 0 fills the cache, the
    others then read it."""
    data = prepare_data(cfg.data, run_dir) if main else None
    barrier()
    if data is None:
        with contextlib.redirect_stdout(io.StringIO()):  # rank 0 has said it all
            data = prepare_data(cfg.data, run_dir, progress=False)
    if main:
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
        print(f"[data] {len(data.train)} train / {len(data.test)} test slices from {data.cohort_root} ({data.layout})"
              + (f"; skipped {len(data.skipped)} subjects" if data.skipped else ""))
        subjects = data.train.attributes.drop_duplicates("subject_id")  # a real cohort has several slices a subject
        print(format_composition(subgroup_table(subjects)))  # the imbalance the main job addresses
    return data


def run_stages(cfg: RunConfig, run_dir: Path, upto: str = "all", resume: bool = False, force: tuple[str, ...] = (),
               commands: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> Path:
    """Run every stage up to `upto` (a stage name, or all = every stage + report.md) except those in `skip` (a
    stage no later one reads, e.g. evaluation in a cross-validation fold); returns the run folder."""
    ranks = init_from_env(cfg.device)
    if ranks.world > 1 and cfg.generators.extra_seeds:  # they train after the plan, where rank 0 runs alone
        raise InputError("generators.extra_seeds", "extra generators train in a single process; run without torchrun "
                                                   "or train each as its own run")
    for section in ("vae_train", "ldm_train", "controlnet_train"):  # before anything is written
        ranks.rows(getattr(cfg, section).batch_size, where=f"{section}.batch_size")
    with run_lock(run_dir) if ranks.is_main else contextlib.nullcontext():  # one writer per run folder
        return _run_locked(cfg, run_dir, ranks, upto, resume, force, commands, skip)


def _run_locked(cfg: RunConfig, run_dir: Path, ranks, upto: str, resume: bool, force: tuple[str, ...],
                commands: tuple[str, ...], skip: tuple[str, ...] = ()) -> Path:
    names = tuple(STAGE) if upto == "all" else tuple(STAGE)[:tuple(STAGE).index(upto) + 1]
    names = tuple(n for n in names if n not in skip)
    check_reusable(cfg, run_dir, tuple(n for n in names if n in TRAINED), set(force))  # before config.yaml changes
    timings_path = run_dir / "timings.json"
    timings = read_json_object(timings_path, "stage timings") if timings_path.is_file() else {}
    run = RunState(cfg, run_dir, prepare(cfg, run_dir, ranks.is_main), resume, set(force), list(commands), timings)
    for stage in (STAGE[n] for n in names):
        if not (stage.trained or ranks.is_main):
            break  # rank 0 alone runs what follows training
        output = run_dir / stage.output
        if output.is_file() and stage.name not in run.force:
            if ranks.is_main:
                verify_stage(run_dir, stage.name)  # reused only if what it consumed is still what is there
                print(f"[{stage.name}] done already: {output} (use --force {stage.name} to redo)")
            continue
        tic = time.perf_counter()
        run.force |= set(tuple(STAGE)[tuple(STAGE).index(stage.name) + 1:])  # later outputs are now stale
        if ranks.is_main:
            forget_stage(run_dir, stage.name)
        result = stage.fn(run)
        timings[stage.name] = round(time.perf_counter() - tic, 1)
        if ranks.is_main:
            record_stage(run_dir, stage.name)
            atomic_write_bytes(timings_path, json.dumps(timings, indent=1).encode())
            print(f"[{stage.name}] finished in {timings[stage.name]:.0f} s -> {result}")
    if upto == "all" and ranks.is_main:
        print(f"[report] {write_main_report(run)}")
    return run_dir
