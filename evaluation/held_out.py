"""Real-data quality checks on held-out patients, independent of the Dice segmenter where the issue asks for it:

- realism features from a small classifier trained on real training slices to predict health x slice position
  (its pooled penultimate features), not from the segmenter that scores control fidelity;
- subject-disjoint FID: generated images from the masks of one half of the held-out subjects against real images
  of the other half, beside the real-vs-real bound on the same two halves at the same n;
- control fidelity: the segmenter's Dice and EF-proxy errors on generated images against their conditioning masks,
  on real held-out images (its own accuracy) and on their VAE reconstructions (the latent space's ceiling), also per
  slice position;
- the median |EF proxy error| and the Dice ratios against the segmenter's own Dice, as target checks.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from data.errors import InputError
from data.prompts import SLICE_POSITIONS
from evaluation.attributes import attribute_labels, train_one
from evaluation.features import Extractor
from evaluation.fid import fid_from_features
from evaluation.fidelity import descriptor_errors, dice_per_structure
from evaluation.image_sets import ImageSet
from evaluation.segmenter import segment
from geometry.descriptors import describe_ed_es

FEATURE_LABELS = ("health", "slice_position")  # what the realism classifier learns to tell apart


def realism_labels(attributes) -> list[Optional[str]]:
    """Rows -> 'health|position' labels (the known one alone when the other is unknown; None when both are)."""
    table = attribute_labels(attributes, use_numbers=True)
    out = []
    for health, position in zip(table["health"], table["slice_position"]):
        parts = [p for p in (health, position) if isinstance(p, str)]  # a missing label may read as NaN
        out.append("|".join(parts) if parts else None)
    return out


def classifier_extractor(real_train, epochs: int, seed: int = 0, device: Union[str, torch.device] = "cpu",
                         progress: bool = True) -> Optional[Extractor]:
    """A ResNet trained on real_train (SliceSet/ImageSet) to predict health x slice position -> its pooled
    features as an Extractor; None when the training set has fewer than two such classes."""
    labels = realism_labels(real_train.attributes)
    known = np.array([lab is not None for lab in labels])
    vocab = sorted({lab for lab in labels if lab is not None})
    if len(vocab) < 2:
        return None
    y = np.array([vocab.index(lab) for lab, k in zip(labels, known) if k])
    model = train_one(np.asarray(real_train.images)[known], y, len(vocab), epochs, 32, 1e-3, seed, device)
    dev = next(model.parameters()).device

    def embed(x: np.ndarray) -> np.ndarray:
        return model.features(torch.as_tensor(x).to(dev)).cpu().numpy()

    name = f"realism classifier ({len(vocab)} health x slice-position classes, trained here on {int(known.sum())} real images)"
    note = ("FID features: a classifier trained on the real training slices to predict health x slice position "
            "(not the Dice segmenter), so realism and control fidelity are judged by different networks")
    return Extractor(name, note, embed, progress=progress)


def disjoint_fid(real_feats: np.ndarray, real_subjects: Sequence[str], fake_feats: np.ndarray,
                 fake_subjects: Sequence[str], n: int, repeats: int, seed: int = 0) -> dict:
    """Each repeat halves the held-out subjects (A, B) at random: FID(fakes made from A's masks, real B) and the
    bound FID(real A, real B), n images a side. fake_subjects: the held-out subject whose masks made each fake."""
    real_ids, fake_ids = np.asarray(real_subjects), np.asarray(fake_subjects)
    if len(real_ids) != len(real_feats) or len(fake_ids) != len(fake_feats):
        raise InputError("subjects", "expected one subject id per feature row on each side")
    subjects = np.unique(real_ids)
    if len(subjects) < 2:
        raise InputError("subjects", f"need at least 2 held-out subjects, got {len(subjects)}")
    rng = np.random.default_rng(seed)
    fake, bound, sizes = [], [], []
    for _ in range(int(repeats)):
        half_a = rng.permutation(subjects)[: len(subjects) // 2]
        real_a, real_b = np.flatnonzero(np.isin(real_ids, half_a)), np.flatnonzero(~np.isin(real_ids, half_a))
        fake_a = np.flatnonzero(np.isin(fake_ids, half_a))
        m = min(int(n), len(real_a), len(real_b), len(fake_a))
        if m < 2:
            raise InputError("n", f"a subject half leaves {m} image(s) a side; need at least 2")
        pick_b = rng.choice(real_b, m, replace=False)
        fake.append(fid_from_features(fake_feats[rng.choice(fake_a, m, replace=False)], real_feats[pick_b]))
        bound.append(fid_from_features(real_feats[rng.choice(real_a, m, replace=False)], real_feats[pick_b]))
        sizes.append(m)
    stats = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    return {"n_per_side": int(min(sizes)), "repeats": int(repeats), "fake_vs_real": stats(fake),
            "real_vs_real_bound": stats(bound), "ratio": float(np.mean(fake) / np.mean(bound))}


def ef_errors(pred_masks: np.ndarray, target_masks: np.ndarray, spacing_mm: float) -> np.ndarray:
    """(N, 2, S, S) ED/ES label pairs -> EF proxy(pred) - EF proxy(target) per item (NaN where undefined); negative:
    the predicted pair contracts less than its target (e.g. an ES cavity drawn too large)."""

    def ef(m):
        return np.array([describe_ed_es(x[0], x[1], spacing_mm)["ef_proxy"] for x in m], dtype=np.float64)

    return ef(pred_masks) - ef(target_masks)


def _fidelity(pred: np.ndarray, masks: np.ndarray, spacing_mm: float) -> dict:
    """Dice per structure, descriptor MAEs and the EF proxy's median absolute / signed error of predicted masks."""
    ef = ef_errors(pred, masks, spacing_mm)
    defined = np.isfinite(ef).any()
    return {"dice": dice_per_structure(pred, masks), "descriptor_mae": descriptor_errors(pred, masks, spacing_mm),
            "ef_proxy_abs_error_median": float(np.nanmedian(np.abs(ef))) if defined else None,
            "ef_proxy_signed_error_median": float(np.nanmedian(ef)) if defined else None}


def control_fidelity(model, real_test: ImageSet, fake: ImageSet, spacing_mm: float,
                     reconstructed: Optional[np.ndarray] = None, positions: Optional[dict] = None) -> dict:
    """Dice per structure and descriptor errors of the segmenter on fakes (vs their conditioning masks) and on
    real_test (vs the true masks: the segmenter's own accuracy, the ceiling). reconstructed: (N, 2, S, S) autoencoder
    reconstructions of real_test's images, scored against its masks ("vae_reconstruction"): the latent space's
    ceiling, since no generator decodes masks better than the autoencoder reproduces real images.
    positions: {"real_test": labels, "fake": labels} slice position per image (None where unknown); adds
    "by_position" (n, Dice, EF errors per position) to every side (the reconstructions take real_test's)."""
    sides = [("real_test", real_test.images, real_test.masks), ("fake", fake.images, fake.masks)]
    if reconstructed is not None:
        if np.shape(reconstructed) != real_test.images.shape:
            raise InputError("reconstructed", f"shape {np.shape(reconstructed)} differs from real_test's "
                                              f"{real_test.images.shape}")
        sides.append(("vae_reconstruction", reconstructed, real_test.masks))
    positions = positions or {}
    out = {}
    for name, images, masks in sides:
        if masks is None:
            out[name] = {"skipped": "no masks (e.g. samples generated without a conditioning mask)"}
            continue
        pred = segment(model, images)
        out[name] = _fidelity(pred, masks, spacing_mm)
        where = positions.get("real_test" if name == "vae_reconstruction" else name)
        if where is not None:
            where = np.asarray([p if isinstance(p, str) else "" for p in where], dtype=object)
            rank = lambda p: (SLICE_POSITIONS.index(p) if p in SLICE_POSITIONS else len(SLICE_POSITIONS), p)  # noqa: E731
            out[name]["by_position"] = {p: {"n": int((where == p).sum()),
                                            **_fidelity(pred[where == p], masks[where == p], spacing_mm)}
                                        for p in sorted((p for p in set(where) if p), key=rank)}
    return out


def target_checks(metrics: dict, dice_ratio: float = 0.90, ef_median: float = 0.05, fid_ratio: float = 2.0) -> dict:
    """The issue-12 targets read off evaluate()'s metrics: {check: {value, target, met}}."""
    out = {}
    control = metrics.get("control_fidelity", {})
    if "dice" in control.get("fake", {}) and "dice" in control.get("real_test", {}):
        for name, value in control["fake"]["dice"].items():
            ratio = value / control["real_test"]["dice"][name] if control["real_test"]["dice"][name] else float("nan")
            out[f"dice_ratio_{name}"] = {"value": ratio, "target": f">= {dice_ratio}", "met": bool(ratio >= dice_ratio)}
        ef = control["fake"].get("ef_proxy_abs_error_median")
        if ef is not None:
            out["ef_proxy_abs_error_median"] = {"value": ef, "target": f"<= {ef_median}", "met": bool(ef <= ef_median)}
    fid = metrics.get("fid_disjoint", {})
    if "ratio" in fid:
        out["fid_over_bound"] = {"value": fid["ratio"], "target": f"<= {fid_ratio}", "met": bool(fid["ratio"] <= fid_ratio)}
    return out
