"""Evaluate generated cardiac images against real ones and write metrics.json, a Markdown table and a figure.

Reference for FID/KID is real_test: the domain segmenter (the feature extractor without Inception weights) was
trained on real_train, so only real_test is unseen by it, as generated images are. The real-vs-real bound splits
real_test by subject at the same n per side, so FID and its floor compare.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch

from data.json_ready import json_ready
from data.errors import InputError
from data.atomic import atomic_write_all
from data.fields import bounded, check_fields
from evaluation.attributes import DEFAULT_ATTRIBUTES, attribute_accuracy, attribute_labels, train_attribute_classifiers
from evaluation.diversity import mean_pairwise_ms_ssim, nearest_real_distance
from evaluation.features import make_extractor
from evaluation.fid import real_vs_real_bound, repeated_fid
from evaluation.held_out import classifier_extractor, control_fidelity, disjoint_fid, target_checks
from evaluation.image_sets import ImageSet, as_image_set
from evaluation.kid import kernel_inception_distance
from evaluation.segmenter import SegmenterConfig, train_segmenter
from evaluation.training_set import TrainingSetConfig

SUBGROUP_KEYS = ("sex", "age_decade", "bmi_category", "health")
DEFAULT_SPACING_MM = 2.0  # the default preprocessed grid: 128 mm crop on 64 px


@dataclass
class EvalConfig:
    fid_n: int = bounded(500, lo=2)  # images per side (clipped to what is available)
    fid_repeats: int = bounded(4, lo=1)
    kid_subsets: int = bounded(50, lo=1)
    kid_subset_size: int = bounded(100, lo=2)
    segmenter_steps: int = bounded(600, lo=1)
    attribute_epochs: int = bounded(5, lo=1)
    seed: int = bounded(0, lo=0, hi=2 ** 32, hi_open=True)
    min_group: int = bounded(10, lo=1)  # subgroups with fewer images on either side get no FID
    max_ms_ssim_pairs: int = bounded(500, lo=1)  # per MS-SSIM set
    segmenter_base: int = bounded(16, lo=1, hi=1024)  # width of the domain segmenter
    segmenter_batch_size: int = bounded(16, lo=1)
    # FID features: "auto" = Inception when weights are given, else the segmenter's encoder; "classifier" = a
    # health x slice-position classifier trained on the real training slices (independent of the Dice check)
    features: str = "auto"
    samples_per_mask: int = bounded(1, lo=1)  # generated images per held-out mask (seeds): more generated images
    training_set: TrainingSetConfig = field(default_factory=TrainingSetConfig)  # the plan's samples (run/downstream.py)

    def __post_init__(self) -> None:
        if self.features not in ("auto", "classifier"):
            raise InputError("evaluation.features", f"expected 'auto' or 'classifier', got {self.features!r}")
        check_fields(self, "evaluation")


def _mean_std(pair: tuple[float, float]) -> dict:
    return {"mean": pair[0], "std": pair[1]}


def bound_capacity(subject_ids) -> int:
    """Largest n that every subject-disjoint halving can supply: the images of the smallest half of the subjects."""
    counts = np.sort(np.unique(np.asarray(subject_ids), return_counts=True)[1])
    return int(counts[: len(counts) // 2].sum())


def fid_block(real: np.ndarray, real_subjects, fake: np.ndarray, cfg: EvalConfig) -> dict:
    """FID (fake vs real) and the real-vs-real bound (real halved by subject) at one n per side, plus KID."""
    n = min(int(cfg.fid_n), len(fake), bound_capacity(real_subjects))
    if n < 2:
        return {"skipped": f"too few images for n >= 2 per side ({len(fake)} fake, {len(real)} real in "
                           f"{len(set(real_subjects))} subjects)"}
    m = min(int(cfg.kid_subset_size), len(real), len(fake))
    return {"n_per_side": n, "repeats": int(cfg.fid_repeats),
            "fake_vs_real": _mean_std(repeated_fid(real, fake, n, cfg.fid_repeats, cfg.seed)),
            "real_vs_real_bound": _mean_std(real_vs_real_bound(real, real_subjects, n, cfg.fid_repeats, cfg.seed)),
            "kid": {**_mean_std(kernel_inception_distance(real, fake, cfg.kid_subsets, m, seed=cfg.seed)),
                    "subset_size": m}}


def subgroup_fid(real: np.ndarray, real_labels: pd.DataFrame, fake: np.ndarray, fake_labels: pd.DataFrame,
                 cfg: EvalConfig) -> dict:
    """{key: {value: FID/KID of that subgroup's fakes vs its real images}}; values with < min_group images on a
    side are skipped with the reason; a key neither side carries (ACDC: sex, age, BMI) maps to {}."""
    out = {}
    for key in SUBGROUP_KEYS:
        values = sorted(set(real_labels[key].dropna()) | set(fake_labels[key].dropna()))
        out[key] = {}
        for value in values:
            r, f = (real_labels[key] == value).to_numpy(), (fake_labels[key] == value).to_numpy()
            n = min(int(cfg.fid_n), int(r.sum()), int(f.sum()))
            entry = {"n_real": int(r.sum()), "n_fake": int(f.sum())}
            if n < cfg.min_group:
                out[key][value] = {**entry, "skipped": f"fewer than {cfg.min_group} images on a side"}
                continue
            fid = repeated_fid(real[r], fake[f], n, cfg.fid_repeats, cfg.seed)
            kid = kernel_inception_distance(real[r], fake[f], cfg.kid_subsets, n, seed=cfg.seed)
            out[key][value] = {**entry, "n_per_side": n, "fid": _mean_std(fid), "kid": _mean_std(kid)}
    return out


def _condition_key(data: ImageSet, i: int) -> str:
    mask = "" if data.masks is None else hashlib.sha1(np.ascontiguousarray(data.masks[i])).hexdigest()
    return f"{data.prompts[i]}|{mask}"


def diversity(fake: ImageSet, real_train: ImageSet, real_test: ImageSet, cfg: EvalConfig) -> dict:
    """Mean pairwise MS-SSIM (fakes sharing prompt and mask, all fakes, real_test) and nearest-real distances."""
    pairs = cfg.max_ms_ssim_pairs
    keys = pd.Series([_condition_key(fake, i) for i in range(len(fake))])
    groups = [g for g in keys.groupby(keys).indices.values() if len(g) >= 2]
    same = [mean_pairwise_ms_ssim(fake.images[g], max(1, pairs // len(groups)), cfg.seed) for g in groups]
    ms = {"fake_same_condition": float(np.mean(same)) if same else None, "n_condition_groups": len(groups),
          "fake_all": mean_pairwise_ms_ssim(fake.images, pairs, cfg.seed) if len(fake) > 1 else None,
          "real_test_all": mean_pairwise_ms_ssim(real_test.images, pairs, cfg.seed) if len(real_test) > 1 else None}
    # distances as root-mean-square pixel differences, so image size does not change the scale
    scale = math.sqrt(fake.images[0].size)
    d_fake = nearest_real_distance(fake.images, real_train.images) / scale
    d_test = nearest_real_distance(real_test.images, real_train.images) / scale
    memo = {"fake_to_train_median": float(np.median(d_fake)), "real_test_to_train_median": float(np.median(d_test)),
            "ratio": float(np.median(d_fake) / np.median(d_test)) if np.median(d_test) > 0 else None,
            "fraction_fake_closer_than_any_real_test": float((d_fake < d_test.min()).mean())}
    return {"ms_ssim": ms, "memorisation": memo}


def _summary(data: ImageSet) -> dict:
    return {"source": data.source, "n_images": len(data), "n_subjects": len(set(data.subject_ids)),
            "has_masks": data.masks is not None}


def _log(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def evaluate(real_train, real_test, fake, cfg: Optional[EvalConfig] = None,
             inception_weights: Optional[Union[str, Path]] = None, progress: bool = True,
             spacing_mm: Optional[float] = None, attrs=DEFAULT_ATTRIBUTES,
             device: Union[str, torch.device] = "cpu", fake_subjects=None,
             reconstructed: Optional[np.ndarray] = None) -> dict:
    """All metrics of generated images `fake` against real images (ImageSet or SliceSet, (N, 2, S, S) in [-1, 1]).

    fake_subjects: the real_test subject whose masks made each fake; adds a subject-disjoint FID ("fid_disjoint").
    reconstructed: autoencoder reconstructions of real_test's images; adds the latent space's control-fidelity
    ceiling (control_fidelity's "vae_reconstruction").

    spacing_mm: pixel size of the preprocessed grid for descriptor errors (default: the samples' sidecars, else
    2.0 mm). Returns a JSON-ready dict (NaN where undefined).
    """
    cfg = cfg or EvalConfig()
    real_train, real_test = as_image_set(real_train, "real_train"), as_image_set(real_test, "real_test")
    fake = as_image_set(fake, "fake")
    for data in (real_test, fake):
        if data.size != real_train.size:
            raise InputError(data.source, f"image size {data.size} differs from the real training images' "
                                          f"{real_train.size} ({real_train.source})")
    notes = []
    if spacing_mm is None:
        spacing_mm = fake.pixel_mm or DEFAULT_SPACING_MM
        notes.append(f"descriptor spacing {spacing_mm} mm/pixel from " +
                     ("the samples' sidecars" if fake.pixel_mm else "the default grid (no pixel_mm in sidecars)"))
    if real_train.masks is None and inception_weights is None:
        raise InputError(real_train.source, "carries no masks to train the domain segmenter and no Inception weights "
                                            "were given: there is no feature extractor for FID")
    seg_model = None
    if real_train.masks is not None:
        _log(f"training the domain segmenter on {len(real_train)} real images ({cfg.segmenter_steps} steps)", progress)
        seg_model = train_segmenter(real_train.images, real_train.masks, SegmenterConfig(base=cfg.segmenter_base),
                                    steps=cfg.segmenter_steps, seed=cfg.seed, batch_size=cfg.segmenter_batch_size,
                                    device=device)
    extractor = None
    if cfg.features == "classifier" and inception_weights is None:
        _log("training the realism classifier (FID features)", progress)
        extractor = classifier_extractor(real_train, cfg.attribute_epochs, cfg.seed, device, progress)
    extractor = extractor or make_extractor("auto", inception_weights, seg_model, len(real_train), device, progress)
    notes += [extractor.note, f"subgroup FIDs use n = min({cfg.fid_n}, images on each side) and FID grows as n "
                              "shrinks: compare subgroups by KID, or at equal n"]
    real_feats = extractor(real_test.images, "real_test features")
    fake_feats = extractor(fake.images, "fake features")
    real_labels = attribute_labels(real_test.attributes, use_numbers=True)
    fake_labels = attribute_labels(fake.attributes, use_numbers=False)
    metrics = {"extractor": {"name": extractor.name, "note": extractor.note},
               "data": {"real_train": _summary(real_train), "real_test": _summary(real_test), "fake": _summary(fake),
                        "image_size": real_train.size, "spacing_mm": float(spacing_mm)},
               "config": asdict(cfg),
               "fid": fid_block(real_feats, real_test.subject_ids, fake_feats, cfg),
               "subgroup_fid": subgroup_fid(real_feats, real_labels, fake_feats, fake_labels, cfg)}
    if fake_subjects is not None:
        metrics["fid_disjoint"] = disjoint_fid(real_feats, real_test.subject_ids, fake_feats, list(fake_subjects),
                                               cfg.fid_n, cfg.fid_repeats, cfg.seed)
    if seg_model is None:
        metrics["control_fidelity"] = {"skipped": "the real training images carry no masks to train a segmenter"}
    else:
        metrics["control_fidelity"] = {"segmenter": {"steps": cfg.segmenter_steps, "trained_on": len(real_train)},
                                       **control_fidelity(seg_model, real_test, fake, float(spacing_mm), reconstructed,
                                                         {"real_test": real_labels["slice_position"],
                                                          "fake": fake_labels["slice_position"]})}
    _log(f"training attribute classifiers ({cfg.attribute_epochs} epochs each)", progress)
    models = train_attribute_classifiers(real_train, attrs, cfg.attribute_epochs, seed=cfg.seed, device=device)
    metrics["attribute_fidelity"] = {
        "real_test": attribute_accuracy(models, real_test.images, real_test.attributes),
        "fake": attribute_accuracy(models, fake.images, fake.attributes, prompted=True)}
    _log("diversity and memorisation", progress)
    metrics.update(diversity(fake, real_train, real_test, cfg))
    metrics["targets"] = target_checks(metrics)
    metrics["notes"] = notes
    return metrics


def write_outputs(metrics: dict, out_json: Union[str, Path], markdown_path: Optional[Union[str, Path]] = None,
                  figure_path: Optional[Union[str, Path]] = None) -> list[Path]:
    """metrics.json (NaN -> null), a Markdown summary and a PNG figure, written together atomically (all or none).
    Returns the paths."""
    data = json_ready(metrics)
    files = {Path(out_json): (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()}
    if markdown_path is not None:
        files[Path(markdown_path)] = markdown_table(data).encode()
    png = None if figure_path is None else figure_png(data)
    if png is not None:
        files[Path(figure_path)] = png
    return atomic_write_all(files)  # a full disk leaves no metrics.json without its .md


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _pm(entry: Optional[dict]) -> str:
    return "—" if not entry or entry.get("mean") is None else f"{_num(entry['mean'])} ± {_num(entry['std'], 2)}"


def _acc(entry: dict) -> str:
    return entry.get("skipped") or f"{_num(entry['accuracy'])} (chance {_num(entry['chance'])}, n={entry['n']})"


def markdown_table(m: dict) -> str:
    """Short Markdown summary of plain (JSON-ready) metrics."""
    lines = ["# Evaluation of generated images", "", f"Feature extractor: **{m['extractor']['name']}**.", "",
             "| metric | generated | real reference |", "|---|---|---|"]
    fid = m["fid"]
    if "skipped" in fid:
        lines.append(f"| FID | {fid['skipped']} | |")
    else:
        lines += [f"| FID (n={fid['n_per_side']}/side, {fid['repeats']} repeats) | {_pm(fid['fake_vs_real'])} | "
                  f"{_pm(fid['real_vs_real_bound'])} (real vs real, subject split) |",
                  f"| KID (subsets of {fid['kid']['subset_size']}) | {_pm(fid['kid'])} | |"]
    if "fid_disjoint" in m:
        d = m["fid_disjoint"]
        lines.append(f"| FID, subject-disjoint (fakes from half A's masks vs real half B; n={d['n_per_side']}/side, "
                     f"{d['repeats']} repeats) | {_pm(d['fake_vs_real'])} | {_pm(d['real_vs_real_bound'])} "
                     f"(real A vs real B; ratio {_num(d['ratio'])}) |")
    control = m["control_fidelity"]
    sides = [control.get(side, control) for side in ("fake", "real_test")]  # a skip may sit at either level
    recon = control.get("vae_reconstruction")
    for name in ("LV", "MYO", "RV"):
        cells = [c.get("skipped") or _num(c["dice"][name]) for c in sides]
        ceiling = f"; VAE reconstructions {_num(recon['dice'][name])}" if recon and "dice" in recon else ""
        lines.append(f"| Dice {name} (segmenter) | {cells[0]} | {cells[1]} (segmenter's own accuracy{ceiling}) |")
    for key in ("ed_lv_area_mm2", "ed_wall_thickness_mm", "ef_proxy"):
        cells = [c.get("skipped") or _num(c["descriptor_mae"][f"{key}_mae"]) for c in sides]
        lines.append(f"| MAE {key} | {cells[0]} | {cells[1]} |")
    for key, label in (("ef_proxy_abs_error_median", "median abs error"),
                       ("ef_proxy_signed_error_median", "median signed error")):
        cells = [c.get("skipped") or _num(c.get(key)) for c in sides]
        ceiling = f" (VAE reconstructions {_num(recon.get(key))})" if recon and "dice" in recon else ""
        lines.append(f"| {label} ef_proxy | {cells[0]} | {cells[1]}{ceiling} |")
    attrs = m["attribute_fidelity"]
    for name, entry in attrs["fake"].items():
        lines.append(f"| accuracy {name} | {_acc(entry)} | {_acc(attrs['real_test'][name])} |")
    ms, memo = m["ms_ssim"], m["memorisation"]
    lines += [f"| MS-SSIM, same prompt and mask ({ms['n_condition_groups']} groups) | "
              f"{_num(ms['fake_same_condition'])} | |",
              f"| MS-SSIM, all pairs | {_num(ms['fake_all'])} | {_num(ms['real_test_all'])} (real test) |",
              f"| nearest real-train distance, median RMS (ratio {_num(memo['ratio'])}) | "
              f"{_num(memo['fake_to_train_median'])} | {_num(memo['real_test_to_train_median'])} (real test) |",
              "", "## Subgroup FID (fake vs real test)", "", "| attribute | value | n real | n fake | FID | KID |",
              "|---|---|---|---|---|---|"]
    for key, groups in m["subgroup_fid"].items():
        if not groups:
            lines.append(f"| {key} | — | 0 | 0 | no {key} labels | |")
        for value, g in groups.items():
            lines.append(f"| {key} | {value} | {g['n_real']} | {g['n_fake']} | "
                         f"{g.get('skipped') or _pm(g['fid'])} | {'' if 'skipped' in g else _pm(g['kid'])} |")
    by_position = {side: control.get(side, {}).get("by_position") or {}
                   for side in ("fake", "real_test", "vae_reconstruction")}
    if by_position["fake"]:
        lines += ["", "## Control fidelity by slice position", "",
                  "| position | n generated / real | Dice LV / MYO / RV generated | real (segmenter's own) | "
                  "median abs EF error generated / real / VAE reconstructions | median signed EF error generated |",
                  "|---|---|---|---|---|---|"]
        dice3 = lambda e: " / ".join(_num(e["dice"][c]) for c in ("LV", "MYO", "RV")) if e else "—"  # noqa: E731
        for pos, f in by_position["fake"].items():
            r, v = by_position["real_test"].get(pos, {}), by_position["vae_reconstruction"].get(pos, {})
            lines.append(f"| {pos} | {f['n']} / {r.get('n', 0)} | {dice3(f)} | {dice3(r)} | "
                         f"{_num(f['ef_proxy_abs_error_median'])} / {_num(r.get('ef_proxy_abs_error_median'))} / "
                         f"{_num(v.get('ef_proxy_abs_error_median'))} | {_num(f['ef_proxy_signed_error_median'])} |")
    if m.get("targets"):
        lines += ["", "## Targets (issue 12)", "", "| check | value | target | met |", "|---|---|---|---|"]
        lines += [f"| {k} | {_num(t['value'])} | {t['target']} | {'yes' if t['met'] else 'no'} |"
                  for k, t in m["targets"].items()]
    return "\n".join(lines + ["", "Notes:"] + [f"- {note}" for note in m.get("notes", [])]) + "\n"


def figure_png(m: dict) -> Optional[bytes]:
    """FID per subgroup with the real-vs-real bound, Dice per structure and attribute accuracy, fake vs real."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display: render to memory
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no figure written", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    fid = m["fid"]
    names, values = [], []
    if "skipped" not in fid:
        names, values = ["all"], [fid["fake_vs_real"]["mean"]]
        axes[0].axhline(fid["real_vs_real_bound"]["mean"], color="k", ls="--", label="real vs real bound")
    for key, groups in m["subgroup_fid"].items():
        for value, g in groups.items():
            if "fid" in g:
                names.append(f"{key}={value}")
                values.append(g["fid"]["mean"])
    axes[0].bar(range(len(values)), values, color="tab:blue")
    axes[0].set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=7)
    axes[0].set_title("FID (fake vs real test)", fontsize=9)
    if "skipped" not in fid:
        axes[0].legend(fontsize=7)
    control, width = m["control_fidelity"], 0.4
    bars = [side for side in ("fake", "real_test", "vae_reconstruction") if control.get(side, {}).get("dice")]
    for k, side in enumerate(bars):
        dice = control[side]["dice"]
        axes[1].bar(np.arange(3) + (k - (len(bars) - 1) / 2) * width * 2 / len(bars),
                    [dice[c] for c in ("LV", "MYO", "RV")], width * 2 / len(bars), label=side)
    axes[1].set_xticks(range(3), ["LV", "MYO", "RV"])
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Dice of the segmenter", fontsize=9)
    attrs = [k for k, v in m["attribute_fidelity"]["fake"].items() if "accuracy" in v]
    for offset, side in ((-width / 2, "fake"), (width / 2, "real_test")):
        acc = [m["attribute_fidelity"][side][k].get("accuracy") or 0.0 for k in attrs]
        axes[2].bar(np.arange(len(attrs)) + offset, acc, width, label=side)
    axes[2].scatter(range(len(attrs)), [m["attribute_fidelity"]["fake"][k]["chance"] for k in attrs], color="k",
                    marker="_", s=300, label="chance (fake)", zorder=3)
    axes[2].set_xticks(range(len(attrs)), attrs, fontsize=8)
    axes[2].set_ylim(0, 1)
    axes[2].set_title("attribute classifier accuracy", fontsize=9)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    fig.suptitle(f"features: {m['extractor']['name']}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
