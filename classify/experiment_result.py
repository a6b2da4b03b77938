"""The debiasing experiment's result: every run's scores and subgroup table, the per-arm analyses, and its files."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_bytes
from data.json_ready import json_ready


@dataclass
class ExperimentResult:
    """runs: one dict per arm x generator x seed (arm, generator (None for arms without synthetic data), seed,
    scores (N_test,), history, summary, subgroups DataFrame); aggregate / intervals: per arm; primary: the declared
    endpoint; comparison: per "<primary arm> vs <baseline>"; secondary: the Holm-corrected family (one row per
    comparison); skipped: arm -> reason."""

    config: dict
    test: dict
    runs: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    aggregate: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)
    primary: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    secondary: list = field(default_factory=list)

    @property
    def arms(self) -> list:
        return list(self.aggregate)

    def subgroup_table(self) -> pd.DataFrame:
        """Long table: arm, generator, seed, then subgroup_metrics' columns."""
        keys = ["arm", "generator", "seed"]
        tables = [r["subgroups"].assign(arm=r["arm"], generator=r["generator"], seed=r["seed"]) for r in self.runs]
        if not tables:
            return pd.DataFrame(columns=keys + ["grouping", "group"])
        table = pd.concat(tables, ignore_index=True)
        return table[keys + [c for c in table.columns if c not in keys]]

    def to_dict(self) -> dict:
        return json_ready({"config": self.config, "test": self.test, "arms": self.arms, "skipped": self.skipped,
                           "aggregate": self.aggregate, "intervals": self.intervals, "primary": self.primary,
                           "comparison": self.comparison, "secondary": self.secondary, "runs": self.runs})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def save(self, out_dir: str | Path) -> Path:
        """Write out_dir/experiment.json and out_dir/subgroups.csv atomically; returns out_dir."""
        out_dir = Path(out_dir)
        atomic_write_bytes(out_dir / "experiment.json", self.to_json().encode())
        buffer = io.StringIO()
        self.subgroup_table().to_csv(buffer, index=False)
        atomic_write_bytes(out_dir / "subgroups.csv", buffer.getvalue().encode())
        return out_dir
