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
from data.planner import PlanTarget
from data.preprocess import PreprocessConfig
from data.rare import RareGroup
from ddpm.sampling import SampleSettings
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
    # Make one group rare among the TRAINING subjects (test subjects untouched), e.g. {key: health, value:
    # myocardial_infarction, keep: 0.25}: the setting of the real-data debiasing arm (data/rare.py). None = off.
    rare: Optional[RareGroup] = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError("data.test_fraction", f"expected a fraction in (0, 1), got {self.test_fraction}")
        if self.synthetic_n < 8:
            raise InputError("data.synthetic_n", f"expected at least 8 subjects, got {self.synthetic_n}")


@dataclass
class DiffusionConfig:
    schedule: str = "scaled_linear"
    num_train_steps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: str = "epsilon"  # epsilon | v
    cond_dropout: float = 0.1  # prompt replaced by "" this often (classifier-free guidance)


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

    def __post_init__(self) -> None:
        if self.unet.in_channels != self.vae.latent_channels or self.unet.out_channels != self.vae.latent_channels:
            raise InputError("unet.in_channels", f"must equal vae.latent_channels ({self.vae.latent_channels})")
        if self.unet.context_dim != self.text.width:
            raise InputError("unet.context_dim", f"must equal text.width ({self.text.width})")
        latent = self.data.preprocess.size // self.vae.downsample_factor
        if self.data.preprocess.size % self.vae.downsample_factor or latent % self.unet.downsample_factor:
            raise InputError("data.preprocess.size", f"{self.data.preprocess.size} must be divisible by the VAE factor "
                             f"({self.vae.downsample_factor}) times the UNet factor ({self.unet.downsample_factor})")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise InputError("device", f"expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
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
