"""Evaluation of the synthetic images that actually go into training (the plan's samples), not the mirror set.

One attribute network trained on the real training images (evaluation/attribute_net.py) gives prompted-attribute
recovery and the appearance features; then memorisation (donor and nearest real distances), a donor-grouped
real-vs-synthetic discriminator with the label shortcut, the cross-subgroup FID matrix and FID at equal n against
a pool of real reference images beside the bound split by subject inside that same pool. All per planned cell and
overall. The reference pool (run/downstream.py:fid_reference) must share no subject with the real training set,
whose subjects the plan's donors are.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from data.atomic import atomic_write_all
from data.errors import InputError
from data.fields import bounded, check_fields
from data.json_ready import json_ready
from data.planner import KEY_VALUES, cell_keys
from evaluation.attribute_net import train_attribute_net
from evaluation.attributes import attribute_labels
from evaluation.discriminator import discriminator_report, out_of_fold_scores
from evaluation.memorisation import memorisation
from evaluation.training_fid import cross_fid_matrix, equal_n_fid

RECOVERED = ("sex", "age_group", "bmi_category", "health")  # the prompt's attributes, in attribute_labels' names
MATRIX_KEYS = ("sex", "age_group", "bmi_group", "health")  # fairness groups; ACDC has health and BMI only
CELL_KEYS = ("health", "sex", "age_group", "bmi_group")
FID_REFERENCES = ("auto", "fresh", "test")


@dataclass
class TrainingSetConfig:
    enabled: bool = True
    epochs: int = bounded(3, lo=1)  # attribute network (recovery heads + features)
    discriminator_epochs: int = bounded(2, lo=1)
    folds: int = bounded(3, lo=2)  # donor-grouped cross-validation of the discriminator
    fid_n: int = bounded(500, lo=2)  # per side; a side with fewer is drawn with replacement (reported)
    # the FIDs' real side: "fresh" = the fresh test cohort (needs fresh_test.n > 0), "test" = the held-out test set,
    # "auto" = fresh when one is configured, else test
    fid_reference: str = "auto"
    fid_repeats: int = bounded(4, lo=1)
    matrix_n: int = bounded(200, lo=2)  # cross-subgroup FID: at most this many per side, one n per attribute
    min_group: int = bounded(10, lo=2)
    n_boot: int = bounded(200, lo=1)

    def __post_init__(self) -> None:
        if self.fid_reference not in FID_REFERENCES:
            raise InputError("evaluation.training_set.fid_reference",
                             f"expected one of {', '.join(FID_REFERENCES)}, got {self.fid_reference!r}")
        check_fields(self, "evaluation.training_set")


def cell_names(attributes: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Rows -> 'value/value/...' over keys ('?' where a field is missing); 'all' when keys is empty."""
    if not keys:
        return ["all"] * len(attributes)
    table = cell_keys(attributes, tuple(keys))
    return ["/".join("?" if v is None else str(v) for v in row) for row in table.itertuples(index=False)]


def _accuracy(pred: np.ndarray, truth: pd.Series, vocab: tuple) -> dict:
    seen = truth.isin(vocab).to_numpy()
    if not seen.any():
        return {"n": 0}
    y = truth[seen].to_numpy()
    chance = float(pd.Series(y).value_counts(normalize=True).max())
    return {"accuracy": float((pred[seen] == y).mean()), "chance": chance, "n": int(seen.sum())}


def recovery(net, images: np.ndarray, labels: pd.DataFrame, cells: Sequence[str]) -> dict:
    """Accuracy of each head against the rows' labels, overall and per cell."""
    pred, cells = net.predict(images), np.asarray(cells, object)
    out = {"overall": {}, "per_cell": {}}
    for name, vocab in net.heads.items():
        out["overall"][name] = _accuracy(pred[name], labels[name], vocab)
    for cell in sorted(set(cells)):
        idx = np.flatnonzero(cells == cell)
        out["per_cell"][cell] = {name: _accuracy(pred[name][idx], labels[name].iloc[idx], vocab)
                                 for name, vocab in net.heads.items()}
    return out


def check_reference(reference, real_train) -> None:
    """InputError when the FID reference pool shares a subject with the real training set (the plan's donors)."""
    shared = sorted(set(map(str, reference.subject_ids)) & set(map(str, real_train.subject_ids)))
    if shared:
        raise InputError("training-set FID reference", f"shares {len(shared)} subject(s) with the real training set "
                                                       f"(e.g. {shared[0]}); expected real images no stage trains on")


def evaluate_training_set(real_train, real_test, synthetic, plan: pd.DataFrame, cfg: TrainingSetConfig,
                          keys: Sequence[str], positive: Sequence[str], device: Union[str, torch.device] = "cpu",
                          reference: Optional[tuple] = None) -> dict:
    """real_train/real_test/synthetic: SliceSets (images (N, 2, S, S)); plan: plan.csv rows in synthetic's order
    (mask_subject_id, mask_row index real_train); keys: the plan's cell keys; positive: the label's conditions;
    reference: (SliceSet, description) of the real side of both FIDs (default: real_test, the held-out test set)."""
    pool, pool_name = reference if reference is not None else (real_test, "held-out test set")
    check_reference(pool, real_train)
    tic, seed = time.perf_counter(), 0
    train_labels = attribute_labels(real_train.attributes, use_numbers=True)
    net = train_attribute_net(real_train.images, train_labels, RECOVERED, cfg.epochs, seed=seed, device=device)
    # a sample's labels are its plan row's numbers: its cell (the prompt carries the age decade only)
    syn_labels = attribute_labels(plan, use_numbers=True)
    syn_cells, train_cells = cell_names(plan, keys), cell_names(real_train.attributes, keys)
    test_cells = cell_names(real_test.attributes, keys)
    out = {"n": {"real_train": len(real_train), "real_test": len(real_test), "synthetic": len(synthetic),
                 "donors": int(plan["mask_subject_id"].nunique())},
           "cell_keys": list(keys),
           "attribute_recovery": {
               "heads": {k: list(v) for k, v in net.heads.items()},
               "synthetic": recovery(net, synthetic.images, syn_labels, syn_cells),
               "real_test": recovery(net, real_test.images, attribute_labels(real_test.attributes), test_cells)}}
    f_train, f_test, f_syn = (net.features(x) for x in (real_train.images, real_test.images, synthetic.images))
    rows = plan["mask_row"].to_numpy()
    out["memorisation"] = {
        "pixels": memorisation(synthetic.images, real_train.images, real_train.subject_ids, rows, syn_cells),
        "features": memorisation(f_syn, f_train, real_train.subject_ids, rows, syn_cells)}
    is_syn = np.r_[np.zeros(len(real_train), int), np.ones(len(synthetic), int)]
    groups = list(real_train.subject_ids) + [str(s) for s in plan["mask_subject_id"]]
    scores = out_of_fold_scores(np.concatenate([real_train.images, synthetic.images]), is_syn, groups, cfg.folds,
                                cfg.discriminator_epochs, seed, device)
    others = [k for k in keys if k != "health"]
    subgroups = cell_names(real_train.attributes, others) + cell_names(plan, others)
    label = np.isin(list(real_train.attributes["health"]) + list(plan["health"]), list(positive)).astype(int)
    out["discriminator"] = {"folds": cfg.folds, "epochs": cfg.discriminator_epochs, "subgroup_keys": others,
                            **discriminator_report(scores, is_syn, groups, train_cells + syn_cells, subgroups, label,
                                                   cfg.n_boot, seed)}
    f_pool = f_test if pool is real_test else net.features(pool.images)
    out["fid_reference"] = {"name": pool_name, "images": len(pool), "subjects": len(set(pool.subject_ids))}
    out["fid_equal_n"] = equal_n_fid(f_pool, pool.subject_ids, f_syn, cfg.fid_n, cfg.fid_repeats, seed)
    real_groups, syn_groups = cell_keys(pool.attributes, MATRIX_KEYS), cell_keys(plan, MATRIX_KEYS)
    out["fid_matrix"] = {k: cross_fid_matrix(f_pool, real_groups[k], f_syn, syn_groups[k], cfg.matrix_n,
                                             cfg.min_group, cfg.fid_repeats, seed, KEY_VALUES[k]) for k in MATRIX_KEYS}
    out["features"] = (f"pooled penultimate features ({f_syn.shape[1]}-d) of a ResNet trained here on "
                       f"{len(real_train)} real training images to predict {', '.join(net.heads)} (not the Dice "
                       "segmenter)")
    out["seconds"] = round(time.perf_counter() - tic, 1)
    return out


def write_training_set(result: dict, json_path: Path, markdown_path: Path) -> list[Path]:
    """training_set.json (NaN -> null) and its Markdown section, written together atomically."""
    data = json_ready(result)
    return atomic_write_all({Path(json_path): (json.dumps(data, indent=1, allow_nan=False) + "\n").encode(),
                             Path(markdown_path): training_set_markdown(data).encode()})


def _n(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _acc(entry: dict, n: bool = False) -> str:
    if "accuracy" not in entry:
        return "—"
    return f"{entry['accuracy']:.2f}" + (f" (n={entry['n']})" if n else "")


def _ci(entry: dict) -> str:
    return "—" if entry.get("auc") is None else f"{entry['auc']:.2f} [{_n(entry['lo'], 2)}, {_n(entry['hi'], 2)}]"


def training_set_markdown(m: dict) -> str:
    """The report section of a (JSON-ready) evaluate_training_set result."""
    n, rec = m["n"], m["attribute_recovery"]
    heads = list(rec["heads"])
    lines = [f"{n['synthetic']} synthetic training images from {n['donors']} donors, against {n['real_train']} real "
             f"training and {n['real_test']} real held-out images; FIDs against the {m['fid_reference']['name']}. "
             f"Features: {m['features']}.", "",
             "**Prompted-attribute recovery** (heads trained on real training images; a synthetic image's label is "
             "its plan row, of which the prompt carries the age decade only):", "",
             "| attribute | synthetic (plan) | real held-out | chance (synthetic) |", "|---|---|---|---|"]
    for h in heads:
        s, r = rec["synthetic"]["overall"][h], rec["real_test"]["overall"][h]
        lines.append(f"| {h} | {_acc(s, True)} | {_acc(r, True)} | {_n(s.get('chance'), 2)} |")
    pix, feat = m["memorisation"]["pixels"], m["memorisation"]["features"]
    lines += ["", "**Memorisation** (RMS distance; flagged = closer than the 5th percentile of real images' distance "
                  "to the nearest image of another subject):", "",
              "| space | donor median | nearest real median | real-to-other-subject median / p5 | flagged (donor) | "
              "flagged (nearest) |", "|---|---|---|---|---|---|"]
    for name, mem in (("pixels", pix), ("features", feat)):
        o = mem["overall"]
        lines.append(f"| {name} | {_n(o['donor_median'])} | {_n(o['nearest_median'])} | "
                     f"{_n(mem['natural_median'])} / {_n(mem['natural_p5'])} | {o['flagged_donor']:.1%} | "
                     f"{o['flagged_nearest']:.1%} |")
    d = m["discriminator"]
    lines += ["", f"**Real-vs-synthetic discriminator** ({d['folds']} donor-grouped folds, a donor and its re-renders "
                  f"in one fold; AUC with 95 % bootstrap over donors): overall {_ci(d['overall'])} "
                  f"({d['overall']['n_real']} real, {d['overall']['n_synthetic']} synthetic).", "",
              "Per cell: prompted-attribute recovery on synthetic / real held-out images, share flagged as close to "
              "the donor (pixels / features), and the discriminator's AUC.", "",
              "| cell | n synthetic / real train | " + " | ".join(heads) + " | flagged donor | AUC |",
              "|---" * (len(heads) + 4) + "|"]
    for cell, entry in rec["synthetic"]["per_cell"].items():
        real, disc = rec["real_test"]["per_cell"].get(cell, {}), d["per_cell"][cell]
        p, f = m["memorisation"]["pixels"]["per_cell"][cell], m["memorisation"]["features"]["per_cell"][cell]
        lines.append(f"| {cell} | {disc['n_synthetic']} / {disc['n_real']} | "
                     + " | ".join(f"{_acc(entry[h])} / {_acc(real.get(h, {}))}" for h in heads)
                     + f" | {p['flagged_donor']:.0%} / {f['flagged_donor']:.0%} | {_ci(disc)} |")
    keys = "/".join(d["subgroup_keys"]) or "everything"
    lines += ["", f"Label shortcut inside each subgroup ({keys}): P(label | synthetic) vs P(label | real), and how "
                  "well the discriminator's score predicts the label there (0.5 = not at all). Within-subgroup AUC, "
                  f"pooled: {_ci(d['shortcut_within_subgroups'])}.", "",
              "| subgroup | n real | n synthetic | P(label \\| real) | P(label \\| synthetic) | score→label AUC |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {g} | {e['n_real']} | {e['n_synthetic']} | {_n(e['p_label_real'], 2)} | "
              f"{_n(e['p_label_synthetic'], 2)} | {_n(e['score_predicts_label_auc'], 2)} |"
              for g, e in d["shortcut"].items()]
    fid, ref = m["fid_equal_n"], m["fid_reference"]
    drawn = [side for side, yes in fid["with_replacement"].items() if yes]
    lines += ["", f"**FID at equal n** = {fid['n_per_side']} a side, {fid['repeats']} repeats on independent random "
                  f"subsets. Real side: the {ref['name']}, {ref['images']} images of {ref['subjects']} subjects; the "
                  "bound splits its subjects into two halves (smallest half "
                  f"{fid['available']['smallest_real_half']} images). Synthetic ({fid['available']['fake']} images) "
                  f"vs real {fid['fake_vs_real']['mean']:.3g} ± {fid['fake_vs_real']['std']:.2g}; real vs real "
                  f"(subject split) {fid['real_vs_real_bound']['mean']:.3g} ± {fid['real_vs_real_bound']['std']:.2g}; "
                  f"ratio {fid['ratio']:.3g}. "
              + (f"Drawn with replacement (fewer than n available): {', '.join(drawn)}." if drawn
                 else "No side drawn with replacement.")]
    lines += ["", f"**Cross-subgroup FID** (rows real group A of the {ref['name']}, columns synthetic group B; the "
                  "diagonal should be lowest if the prompt controls the attribute):"]
    for key, mat in m["fid_matrix"].items():
        if "skipped" in mat:
            lines += ["", f"- {key}: skipped ({mat['skipped']})"]
            continue
        vals = mat["values"]
        rows_ok, cols_ok = sum(mat["diagonal_lowest_in_row"].values()), sum(mat["diagonal_lowest_in_column"].values())
        lines += ["", f"{key} (n = {mat['n_per_side']} a side, {mat['repeats']} repeats): diagonal lowest in "
                      f"{rows_ok}/{len(vals)} rows and {cols_ok}/{len(vals)} columns.", "",
                  "| real \\ synthetic | " + " | ".join(vals) + " |", "|---" * (len(vals) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(f"{mat['matrix'][a][b]:.3g}" for b in vals) + " |" for a in vals]
    return "\n".join(lines + ["", f"({m['seconds']:.0f} s)"]) + "\n"
