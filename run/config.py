"""The whole pipeline's config: one dataclass per section, loaded from configs/*.yaml plus CLI overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from classify.experiment import ExperimentConfig
from classify.resnet import ClassifierConfig
from classify.train import ClassifierTrainConfig
from controlnet.model import ControlNetConfig
from data.errors import InputError
from data.fields import bounded, check_fields
from data.phantom import PhantomKnobs
from data.planner import KEY_VALUES, PlanTarget
from data.preprocess import PreprocessConfig
from data.rare import RareGroup
from ddpm.loss_weighting import LOSS_WEIGHTINGS
from ddpm.sampling import SampleSettings
from ddpm.schedulers import PREDICTIONS, SCHEDULE_KINDS, ddim_timesteps
from ddpm.text_encoder import TextEncoderConfig
from ddpm.trainer import TrainConfig
from ddpm.unet import UNetConfig
from ddpm.vae import VAEConfig
from evaluation.report import EvalConfig
from run.loader import load_config


@dataclass
class DataConfig:
    root: Optional[str] = None  # cohort folder; None = the embedded synthetic cohort
    layout: str = "auto"  # auto | ukbb | acdc
    metadata: Optional[str] = None  # UK Biobank layout: metadata CSV (default <root>/metadata.csv)
    skip_bad: bool = False  # skip (and list) subjects with bad files instead of stopping
    synthetic_n: int = 600
    synthetic_seed: int = 0
    # Synthetic cohort only: the test set is a separate cohort where HF does not depend on the attributes,
    # so every subgroup has positives to measure (a real cohort is split by subject instead).
    synthetic_test_n: int = 200
    test_fraction: float = 0.25  # real cohort: held-out subjects (never seen by any generative stage)
    split_seed: int = 0
    # Subject-level split strata: cell keys of data/planner.py (health, bmi_group, sex, age_group), joined.
    stratify: tuple = ("health",)
    # Cross-validation fold (set per fold by run/cv.py): folds > 0 holds out fold `fold` of a stratified k-fold
    # partition of the subjects seeded by split_seed (data/split.py:stratified_folds) instead of test_fraction.
    folds: int = 0
    fold: int = 0
    # Make one group rare among the TRAINING subjects (test subjects untouched), e.g. {key: health, value:
    # myocardial_infarction, keep: 0.25}: the setting of the real-data debiasing arm (data/rare.py). None = off.
    rare: Optional[RareGroup] = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # Synthetic cohort only: the phantom's difficulty knobs (data/phantom.py:PhantomKnobs), all off by default.
    phantom: PhantomKnobs = field(default_factory=PhantomKnobs)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError("data.test_fraction", f"expected a fraction in (0, 1), got {self.test_fraction}")
        if self.synthetic_n < 8:
            raise InputError("data.synthetic_n", f"expected at least 8 subjects, got {self.synthetic_n}")
        unknown = [k for k in self.stratify if k not in KEY_VALUES]
        if not self.stratify or unknown or len(set(self.stratify)) != len(self.stratify):
            raise InputError("data.stratify", f"expected distinct keys from {', '.join(KEY_VALUES)}, got {list(self.stratify)}")
        if self.folds and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise InputError("data.fold", f"expected folds >= 2 and 0 <= fold < folds, got folds {self.folds}, fold {self.fold}")


@dataclass
class DiffusionConfig:
    schedule: str = "scaled_linear"
    num_train_steps: int = bounded(1000, lo=1, hi=100_000)  # the schedule holds T float64s: no bomb
    beta_start: float = bounded(0.00085, lo=0, hi=1, lo_open=True, hi_open=True)
    beta_end: float = bounded(0.012, lo=0, hi=1, lo_open=True, hi_open=True)
    prediction: str = "epsilon"  # epsilon | v
    cond_dropout: float = bounded(0.1, lo=0, hi=1)  # prompt replaced by "" this often (classifier-free guidance)
    loss_weighting: str = "none"  # none | min_snr (Hang et al. 2023; ddpm/loss_weighting.py)
    min_snr_gamma: float = bounded(5.0, lo=0, lo_open=True)  # the clip gamma of min_snr
    zero_terminal_snr: bool = False  # rescale the schedule to a_T = 0 (Lin et al. 2024); needs prediction v

    def __post_init__(self) -> None:
        # here, not when the ldm stage builds the schedule: a bad value must fail before the VAE trains
        if self.schedule not in SCHEDULE_KINDS:
            raise InputError("diffusion.schedule", f"expected one of {', '.join(SCHEDULE_KINDS)}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise InputError("diffusion.prediction", f"expected one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise InputError("diffusion.loss_weighting", f"expected one of {', '.join(LOSS_WEIGHTINGS)}, "
                                                         f"got {self.loss_weighting!r}")
        if self.zero_terminal_snr and self.prediction == "epsilon":
            raise InputError("diffusion.zero_terminal_snr", "needs diffusion.prediction=v: eps-prediction is undefined "
                                                            "at SNR 0 (the last step is pure noise)")
        check_fields(self, "diffusion")
        if self.schedule != "cosine" and self.beta_start > self.beta_end:
            raise InputError("diffusion.beta_end", f"expected beta_start <= beta_end, got {self.beta_start} > "
                                                   f"{self.beta_end}")


@dataclass
class GeneratorsConfig:
    """More separately trained generators, so the experiment's intervals include generator variance."""
    # each seed s trains a complete generator (VAE, LDM, ControlNet, all with seed s) on the same data and config in
    # generators/seed-<s>/, which samples the same plan; () = the run's own generator only
    extra_seeds: tuple = ()

    def __post_init__(self) -> None:
        seeds = list(self.extra_seeds)
        if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds):
            raise InputError("generators.extra_seeds", f"expected distinct integer seeds in [0, 2**31), got {seeds}")


@dataclass
class FreshTestConfig:
    """A fresh embedded test cohort for the experiment's final numbers: drawn with a seed no other stage used."""
    n: int = bounded(0, lo=0, hi=900_000)  # subjects; 0 = score on the run's own test set
    seed: int = bounded(1000, lo=0, hi=2**31 - 1)

    def __post_init__(self) -> None:
        check_fields(self, "fresh_test")


@dataclass
class CVConfig:
    """Patient-level stratified k-fold cross-validation (run/cv.py): every subject is tested once per fold seed; each
    fold is a complete sub-run (generator, plan, arms) on that fold's training subjects only."""
    folds: int = bounded(0, lo=0, hi=50)  # k; 0 = off (an ordinary run)
    fold_seeds: tuple = (0,)  # one partition per seed (data.split_seed of the fold sub-runs)
    only_folds: tuple = ()  # run only these fold indices (a timing run); () = all, which pooling needs
    evaluate: bool = False  # also run each fold's evaluation stage (held-out realism; costs a sampling pass)

    def __post_init__(self) -> None:
        check_fields(self, "cv")
        seeds = list(self.fold_seeds)
        if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds):
            raise InputError("cv.fold_seeds", f"expected distinct integer seeds in [0, 2**31), got {seeds}")
        if self.folds == 1 or not all(isinstance(f, int) and 0 <= f < max(self.folds, 1) for f in self.only_folds):
            raise InputError("cv.only_folds" if self.folds != 1 else "cv.folds",
                             f"expected folds 0 or >= 2 and fold indices in 0..folds-1, got folds {self.folds}, "
                             f"only_folds {list(self.only_folds)}")


@dataclass
class RunConfig:
    name: str = "default"
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_train: TrainConfig = field(default_factory=TrainConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ldm_train: TrainConfig = field(default_factory=TrainConfig)
    controlnet: ControlNetConfig = field(default_factory=ControlNetConfig)
    controlnet_train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleSettings = field(default_factory=SampleSettings)
    plan: PlanTarget = field(default_factory=PlanTarget)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    classifier_train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    generators: GeneratorsConfig = field(default_factory=GeneratorsConfig)
    fresh_test: FreshTestConfig = field(default_factory=FreshTestConfig)
    cv: CVConfig = field(default_factory=CVConfig)

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.vae.latent_channels or self.unet.out_channels != self.vae.latent_channels:
            raise InputError("unet.in_channels", f"must equal vae.latent_channels ({self.vae.latent_channels})")
        if self.unet.context_dim != self.text.width:
            raise InputError("unet.context_dim", f"must equal text.width ({self.text.width})")
        latent = self.data.preprocess.size // self.vae.downsample_factor
        if self.data.preprocess.size % self.vae.downsample_factor or latent % self.unet.downsample_factor:
            raise InputError("data.preprocess.size", f"{self.data.preprocess.size} must be divisible by the VAE factor "
                             f"({self.vae.downsample_factor}) times the UNet factor ({self.unet.downsample_factor})")
        try:  # the sampling chain against the schedule: sample.py and the plan stage fail here, before any model loads
            ddim_timesteps(self.diffusion.num_train_steps, self.sample.steps, self.sample.spacing, self.sample.steps_offset)
        except InputError as error:
            raise InputError(f"sample.{'steps_offset' if error.where == 'steps_offset' else 'steps'}",
                             f"{error.problem} (diffusion.num_train_steps = {self.diffusion.num_train_steps})") from None
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise InputError("device", f"expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        own = {self.vae_train.seed, self.ldm_train.seed, self.controlnet_train.seed}
        if len(own) == 1 and own & set(self.generators.extra_seeds):
            raise InputError("generators.extra_seeds", f"seed {own.pop()} is the run's own generator's seed; expected "
                                                       "other seeds (a repeat would train the same generator)")
        if self.fresh_test.n:
            if self.data.root is not None:
                raise InputError("fresh_test.n", "a fresh test cohort is drawn from the embedded phantom only; on a "
                                                 "real cohort (data.root) the held-out subjects are the test set: "
                                                 "set fresh_test.n=0")
            if self.fresh_test.seed in (self.data.synthetic_seed, self.data.synthetic_seed + 1):
                raise InputError("fresh_test.seed", f"{self.fresh_test.seed} drew the run's training or test cohort; "
                                                    "expected a seed no earlier stage used")
        elif self.evaluation.training_set.fid_reference == "fresh":
            raise InputError("evaluation.training_set.fid_reference", "'fresh' needs a fresh test cohort "
                                                                      "(fresh_test.n > 0); expected 'auto' or 'test'")
        if self.cv.folds and (self.data.root is None or self.generators.extra_seeds or self.data.folds):
            raise InputError("cv.folds", "cross-validation splits a cohort folder's subjects (set --data), with one "
                                         "generator per fold (no generators.extra_seeds) and no data.folds of its own")
        # runs/<name> must be a new folder inside runs/: no separators, and not '', '.' or '..'.
        if self.name != "".join(c for c in self.name if c.isalnum() or c in "-_.") or self.name.strip(".") == "":
            raise InputError("name", f"run name {self.name!r} may only contain letters, digits, '-', '_' and '.' "
                                     "(and not only dots)")


def load_run_config(path: Optional[str | Path] = None, overrides: list[str] | tuple[str, ...] = (),
                    base: Optional[dict] = None, reads: Optional[tuple[str, ...]] = None,
                    where: str = "config") -> RunConfig:
    """The run config: defaults, then the file at `path` (or `base`, e.g. a checkpoint's config), then the
    `section.key=value` overrides. reads: the top-level keys a command uses (sample.py: sample, plan, device);
    an override of any other key is an error rather than silently ignored."""
    for override in overrides if reads is not None else ():
        if override.split("=", 1)[0].split(".")[0].strip() not in reads:
            raise InputError(f"override {override!r}", f"this command reads only {', '.join(reads)} from the config")
    return load_config(RunConfig, path, overrides, base, where)
