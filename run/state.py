"""What every stage function receives: the run's config, folder, prepared data and the CLI's resume/force."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from run.config import RunConfig
from run.prepare_data import PreparedData

CHECKPOINTS = ("vae", "ldm", "controlnet")  # the trained stages, each one file <name>.safetensors in the run folder


@dataclass
class RunState:
    cfg: RunConfig
    dir: Path  # runs/<name>
    data: PreparedData
    resume: bool = False  # continue an interrupted training stage from its last checkpoint
    force: set[str] = field(default_factory=set)  # stages to redo; grows when a stage reruns (later ones are stale)
    commands: list[str] = field(default_factory=list)  # the command lines behind this run, for the report
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, kept across invocations

    @property
    def checkpoints(self) -> dict[str, Path]:
        return {name: self.dir / f"{name}.safetensors" for name in CHECKPOINTS}
