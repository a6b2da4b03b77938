"""Synthetic bSSFP short-axis phantom: patient attributes -> anatomy numbers -> ED/ES images and masks.

Sensitive attributes leave APPEARANCE cues the masks do not carry (body size, fat, tissue signal/texture);
heart failure shows mainly in GEOMETRY (dilated LV, thin wall, low ejection fraction).
docs/synthetic-cohort.md lists every number below and why. PhantomKnobs (`data.phantom`, all off by default)
make the task harder: heart failure without the geometric sign, per-subgroup presentation, attribute geometry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter

from data.attributes import Attributes, age_group, bmi_group
from data.cohort import LV, MYO, RV
from data.errors import InputError
from data.fields import bounded, check_fields
from data.planner import KEY_VALUES

FOV_MM = 172.8  # in-plane field of view (96 px x 1.8 mm); a shape only changes the resolution
SLAB_MM = 80.0  # base-to-apex coverage (8 slices x 10 mm)
INTENSITY_SCALE = 1000.0  # blood pool ~1000, stored as int16 like a scanner's DICOM values
RENDERED_HEALTH = ("healthy", "heart_failure", "myocardial_infarction")
# Painter's order: each class overwrites the ones before it.
AIR, TISSUE, FAT, LUNG, EPI_FAT, RV_WALL, RV_BLOOD, LV_MYO, LV_BLOOD = range(9)
CLASS_LABEL = np.array([0, 0, 0, 0, 0, 0, RV, MYO, LV], dtype=np.uint8)


GROUP_VALUES = {key: values for key, values in KEY_VALUES.items() if key != "health"}  # the plan's cell keys


@dataclass(frozen=True)
class PhantomKnobs:
    """Difficulty knobs of the phantom cohort (`data.phantom`). All off (the defaults) = the original cohort, bit
    for bit: no extra random draws, same numbers.

    preserved_ef: fraction of heart-failure subjects rendered with HEALTHY geometry (LV size, wall, EF, RV), the
      disease then showing only as `sign`, a diffuse rise of the myocardial signal (relative to blood ~1.0; the
      age cue spans ~0.08 of it over 40 years), as preserved-EF heart failure with diffuse fibrosis/oedema would.
    group_key / group_value / group_preserved_ef: subgroup-specific presentation; inside that subgroup (e.g.
      age_group "<55") group_preserved_ef replaces preserved_ef.
    attribute_geometry: 0 = off; 1 = sex, age and BMI move LV size (+8 % male, +4 % per 5 BMI, +3 % per decade
      over 60), wall (+5 % per 5 BMI, +4 % per decade) and EF (-0.02 per 5 BMI, -0.03 per decade): healthy old,
      obese men then look partly dilated, so geometry is confounded with the attributes that predict the label.
    """

    preserved_ef: float = bounded(0.0, lo=0, hi=1)
    sign: float = bounded(0.06, lo=0, hi=0.5)
    group_key: Optional[str] = None  # sex | age_group | bmi_group
    group_value: Optional[str] = None
    group_preserved_ef: float = bounded(0.0, lo=0, hi=1)
    attribute_geometry: float = bounded(0.0, lo=0, hi=2)

    def __post_init__(self) -> None:
        check_fields(self, "data.phantom")
        if (self.group_key is None) != (self.group_value is None):
            raise InputError("data.phantom.group_key", "set group_key and group_value together (or neither)")
        if self.group_key is not None and self.group_key not in GROUP_VALUES:
            raise InputError("data.phantom.group_key",
                             f"unknown key {self.group_key!r}; expected one of {', '.join(GROUP_VALUES)}")
        if self.group_key is not None and self.group_value not in GROUP_VALUES[self.group_key]:
            raise InputError("data.phantom.group_value", f"unknown {self.group_key} {self.group_value!r}; "
                                                         f"expected one of {', '.join(GROUP_VALUES[self.group_key])}")

    @property
    def off(self) -> bool:
        """True when the cohort is the original one (no knob changes any subject)."""
        grouped = self.group_key is not None and self.group_preserved_ef > 0
        return self.preserved_ef == 0 and not grouped and self.attribute_geometry == 0

    def preserved_ef_rate(self, attrs: Attributes) -> float:
        """P(rendered without the geometric sign | heart failure, this subject's attributes)."""
        if self.group_key is not None:
            value = {"sex": attrs.sex, "age_group": age_group(attrs.age), "bmi_group": bmi_group(attrs.bmi)}
            if value[self.group_key] == self.group_value:
                return self.group_preserved_ef
        return self.preserved_ef

    def is_preserved_ef(self, attrs: Attributes, rng: np.random.Generator) -> bool:
        """Draw whether a subject is preserved-EF heart failure; rng is a stream of its own (one draw, HF only),
        so the other draws, and the subjects at another knob level, stay as they are."""
        return attrs.health == "heart_failure" and rng.random() < self.preserved_ef_rate(attrs)


KNOBS_OFF = PhantomKnobs()


@dataclass(frozen=True)
class Anatomy:
    """Every per-subject number the renderer uses; lengths in mm, angles in radians, signals relative to blood."""

    body_a: float  # thorax semi-axis, left-right (includes subcutaneous fat)
    body_b: float  # thorax semi-axis, anterior-posterior
    fat: float  # subcutaneous fat ring thickness
    epi_fat: float  # epicardial fat layer thickness
    lv_radius: float  # ED endocardial radius at the base
    wall: float  # ED basal wall thickness
    lv_length: float  # base-to-apex length of the LV cavity
    ef: float  # LV ejection fraction (ES cavity area = (1 - ef) x ED, slice by slice)
    rv_depth: float  # ED maximal RV crescent thickness at the base
    rv_ef: float  # RV ejection fraction (approximate: scales the crescent)
    infarct_angle: float  # direction of the thinned infarct segment (myocardial_infarction only)
    infarct_depth: float  # 0 = no infarct; fraction of wall lost at the segment centre
    tissue: float  # background tissue signal
    myo: float  # myocardium signal
    texture: float  # relative amplitude of smooth heterogeneity in tissue and myocardium
    angle: float  # in-plane rotation of the whole anatomy
    rv_angle: float  # direction LV centre -> RV in the image
    shift: tuple[float, float]  # body centre offset from the image centre
    tilt: tuple[float, float]  # in-plane drift of the heart centre per mm of depth (long axis not perpendicular)
    gain: float  # scanner scaling of all signals
    bias: tuple[float, float, float, float, float]  # coil field coefficients of x, y, x^2, y^2, xy (unit FOV)
    noise: float  # Rician noise sigma relative to blood


def _lognormal(rng: np.random.Generator, sd: float) -> float:
    return float(np.exp(sd * rng.standard_normal()))


def anatomy_from_attributes(attrs: Attributes, rng: np.random.Generator, knobs: PhantomKnobs = KNOBS_OFF,
                            preserved_ef: bool = False) -> Anatomy:
    """Attributes (sex, age, bmi, health all set) -> Anatomy; rng draws the within-group variability.

    preserved_ef (heart failure only): healthy geometry plus knobs.sign on the myocardium. The draws are the same
    in number and order whatever the knobs, so a knob changes only what it names.
    """
    if attrs.sex is None or attrs.age is None or attrs.bmi is None or attrs.health is None:
        raise InputError("attributes", f"rendering needs sex, age, bmi and health; got {attrs}")
    if attrs.health not in RENDERED_HEALTH:
        raise InputError("attributes: health",
                         f"cannot render {attrs.health!r}; expected one of {', '.join(RENDERED_HEALTH)}")
    male, age, bmi = float(attrs.sex == "male"), float(attrs.age), float(attrs.bmi)
    hf, mi = attrs.health == "heart_failure", attrs.health == "myocardial_infarction"
    if preserved_ef and not hf:
        raise InputError("attributes: health", f"preserved_ef applies to heart_failure only, got {attrs.health!r}")
    hf = hf and not preserved_ef  # from here on: heart failure WITH its geometric sign
    body_a = float(np.clip(60.0 + 5.0 * male + 1.5 * (bmi - 27.0), 48.0, 82.0)) * _lognormal(rng, 0.03)
    body_b = 0.8 * body_a * _lognormal(rng, 0.03)
    fat = float(np.clip(1.0 + 0.75 * (bmi - 18.0), 1.0, 18.0)) * _lognormal(rng, 0.10)
    epi_fat = float(np.clip(0.3 * (bmi - 20.0), 0.5, 4.5)) * _lognormal(rng, 0.15)
    heart_size = (1.0 + 0.07 * male + 0.006 * (bmi - 27.0)) * _lognormal(rng, 0.05)
    lv_radius = 25.0 * heart_size * (1.22 if hf else 1.06 if mi else 1.0)
    lv_length = SLAB_MM * 1.02 * _lognormal(rng, 0.03)  # apex just beyond the last slice
    wall = (7.0 + 1.0 * male + 0.04 * (age - 60.0)) * (0.78 if hf else 1.0) * _lognormal(rng, 0.06)
    ef_mean, ef_lo, ef_hi = (0.30, 0.15, 0.42) if hf else (0.45, 0.35, 0.55) if mi else (0.62, 0.50, 0.74)
    ef = float(np.clip(ef_mean + 0.05 * rng.standard_normal(), ef_lo, ef_hi))
    rv_depth = 15.0 * heart_size * (1.15 if hf else 1.0) * _lognormal(rng, 0.08)
    rv_ef = float(np.clip((0.35 if hf else 0.50 if mi else 0.55) + 0.05 * rng.standard_normal(), 0.15, 0.70))
    infarct_angle = float(rng.uniform(-np.pi, np.pi))
    tissue = 0.45 - 0.0025 * (age - 60.0) + 0.015 * rng.standard_normal()
    myo = 0.30 - 0.0020 * (age - 60.0) + 0.010 * rng.standard_normal() + (knobs.sign if preserved_ef else 0.0)
    texture = 0.03 + 0.0035 * (age - 40.0)
    angle = float(np.deg2rad(8.0) * rng.standard_normal())
    rv_angle = float(np.deg2rad(200.0 + 10.0 * rng.standard_normal())) + angle
    shift = tuple(float(v) for v in 3.0 * rng.standard_normal(2))
    tilt = tuple(float(v) for v in 0.08 * rng.standard_normal(2))
    gain = float(rng.uniform(0.85, 1.15))
    bias = tuple(float(v) for v in 0.12 * rng.standard_normal(5))
    noise = float(rng.uniform(0.03, 0.05))
    if knobs.attribute_geometry:  # after every draw: the same subject, only its geometry moved
        g, decades, bmi5 = knobs.attribute_geometry, (age - 60.0) / 10.0, (bmi - 27.0) / 5.0
        lv_radius *= 1.0 + g * (0.08 * male + 0.04 * bmi5 + 0.03 * decades)
        wall *= 1.0 + g * (0.05 * bmi5 + 0.04 * decades)
        ef = float(np.clip(ef - g * (0.02 * bmi5 + 0.03 * decades), 0.10, 0.80))
    return Anatomy(body_a, body_b, fat, epi_fat, lv_radius, wall, lv_length, ef,
                   rv_depth, rv_ef, infarct_angle, 0.55 if mi else 0.0, tissue, myo, texture, angle, rv_angle,
                   shift, tilt, gain, bias, noise)


def pixel_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size in mm: fixed field of view and slab, so (96, 96, 8) -> (1.8, 1.8, 10)."""
    return FOV_MM / shape[0], FOV_MM / shape[1], SLAB_MM / shape[2]


def cohort_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """(4, 4) voxel -> mm affine of a phantom volume: diagonal spacing, origin at the first voxel."""
    return np.diag([*pixel_spacing(shape), 1.0])


def _inside_ellipse(u: np.ndarray, v: np.ndarray, a, b) -> np.ndarray:
    return (u / np.maximum(a, 1e-6)) ** 2 + (v / np.maximum(b, 1e-6)) ** 2 < 1.0


def _taper(depth: np.ndarray, length: float) -> np.ndarray:
    """Bullet-shaped radius profile: 1 at the base plane, 0 at depth >= length."""
    return np.sqrt(np.clip(1.0 - (depth / length) ** 2.5, 0.0, None))


def _heart_frame(x: np.ndarray, y: np.ndarray, depth: np.ndarray, an: Anatomy) -> tuple[np.ndarray, ...]:
    """Pixel -> (rho, along, across): distance from the LV axis and coordinates along / across the LV->RV direction.

    x: (X, 1, 1), y: (1, Y, 1), depth: (1, 1, Z) in mm -> three (X, Y, Z) arrays.
    """
    c, s = np.cos(an.rv_angle), np.sin(an.rv_angle)
    # LV sits beside the body centre so that LV + RV together are centred in the thorax; the axis drifts with depth.
    dx = x - (an.shift[0] - 10.0 * c + an.tilt[0] * depth)
    dy = y - (an.shift[1] - 10.0 * s + an.tilt[1] * depth)
    return np.hypot(dx, dy), dx * c + dy * s, -dx * s + dy * c


def _wall(rho: np.ndarray, along: np.ndarray, across: np.ndarray, depth: np.ndarray, an: Anatomy) -> np.ndarray:
    """ED wall thickness per pixel (X, Y, Z): a bit thicker on the septum; an infarct thins one segment mid to apex."""
    cos_rv = along / np.maximum(rho, 1e-6)  # cos(angle between pixel direction and LV->RV)
    wall = an.wall * (1.0 + 0.08 * cos_rv)
    if an.infarct_depth > 0:
        delta = an.infarct_angle - an.rv_angle
        cos_infarct = cos_rv * np.cos(delta) + across / np.maximum(rho, 1e-6) * np.sin(delta)
        bump = np.exp(4.0 * (cos_infarct - 1.0))  # von Mises bump, about +-30 degrees wide
        wall = wall * (1.0 - an.infarct_depth * bump * (depth > 0.3 * an.lv_length))
    return wall


def _heart_classes(cls: np.ndarray, frame: tuple[np.ndarray, ...], wall: np.ndarray, depth: np.ndarray,
                   an: Anatomy, phase: str) -> None:
    """Paint epicardial fat, RV and LV into cls (X, Y, Z) in place for phase "ED" or "ES"."""
    rho, along, across = frame
    r_in = an.lv_radius * _taper(depth, an.lv_length)
    r_out = (an.lv_radius + wall) * _taper(depth, an.lv_length + 1.2 * an.wall)
    r_mid = (an.lv_radius + an.wall) * _taper(depth, an.lv_length + 1.2 * an.wall)  # mean epicardial radius
    rv_depth = an.rv_depth * _taper(depth, 0.85 * an.lv_length)
    if phase == "ES":  # myocardium is incompressible: conserve its area in every slice and direction
        r_in_es = r_in * np.sqrt(1.0 - an.ef)
        r_out = np.sqrt(r_in_es ** 2 + r_out ** 2 - r_in ** 2)
        r_mid = np.sqrt(r_mid ** 2 - an.ef * r_in ** 2)
        r_in = r_in_es
        rv_depth = rv_depth * np.sqrt(1.0 - an.rv_ef)
    # RV: ellipse hugging the LV on the RV side; with rv_depth = 0 it lies just inside the LV circle.
    radial_axis, span_axis = 0.4 * r_mid + rv_depth, 0.8 * r_mid + 0.8 * rv_depth
    u, has_rv = along - 0.6 * r_mid, rv_depth > 0
    outside_lv = rho >= r_out
    epi_rv = _inside_ellipse(u, across, radial_axis + 3.0 + an.epi_fat, span_axis + 3.0 + an.epi_fat) & has_rv
    cls[(epi_rv | (rho < r_out + 0.5 * an.epi_fat)) & (r_out > 0)] = EPI_FAT  # thinner over the LV than the RV
    cls[_inside_ellipse(u, across, radial_axis + 3.0, span_axis + 3.0) & outside_lv & has_rv] = RV_WALL
    cls[_inside_ellipse(u, across, radial_axis, span_axis) & outside_lv & has_rv] = RV_BLOOD
    cls[rho < r_out] = LV_MYO
    cls[rho < r_in] = LV_BLOOD


def _body_classes(shape: tuple[int, int, int], x: np.ndarray, y: np.ndarray, an: Anatomy) -> np.ndarray:
    """Thorax (X, Y) -> classes AIR / TISSUE / FAT / LUNG, repeated over Z."""
    c, s = np.cos(an.angle), np.sin(an.angle)
    bx, by = x[..., 0] - an.shift[0], y[..., 0] - an.shift[1]
    u, v = c * bx + s * by, -s * bx + c * by
    inner_a, inner_b = an.body_a - an.fat, an.body_b - an.fat
    body = np.zeros(shape[:2], dtype=np.uint8)
    body[_inside_ellipse(u, v, an.body_a, an.body_b)] = FAT
    body[_inside_ellipse(u, v, inner_a, inner_b)] = TISSUE
    for side in (-1.0, 1.0):  # lungs flank the mediastinum, slightly posterior
        lung = _inside_ellipse(u - side * 0.55 * inner_a, v - 0.12 * inner_b, 0.36 * inner_a, 0.66 * inner_b)
        body[lung] = LUNG
    return np.repeat(body[:, :, None], shape[2], axis=2)


def _signal(cls: np.ndarray, texture: np.ndarray, an: Anatomy) -> np.ndarray:
    """Class map (X, Y, Z) -> noise-free bSSFP-like signal (bright blood and fat, dark myocardium and lung)."""
    level = np.array([0.0, an.tissue, 0.92, 0.07, 0.88, an.myo, 0.95, an.myo, 1.0], dtype=np.float32)
    t = an.texture  # heterogeneity (the age cue) lives in tissue and myocardium only
    amplitude = np.array([0.02, t, 0.02, 0.02, 0.02, t, 0.02, t, 0.02], dtype=np.float32)
    return level[cls] * (1.0 + amplitude[cls] * texture)


def _finish(signal: np.ndarray, bias_field: np.ndarray, an: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Blur (scanner point spread), coil bias, Rician noise, then int16 counts."""
    blurred = gaussian_filter(signal, sigma=(0.6, 0.6, 0.0), mode="nearest") * bias_field * an.gain
    real, imag = an.noise * rng.standard_normal((2, *signal.shape), dtype=np.float32)
    counts = np.rint(np.hypot(blurred + real, imag) * INTENSITY_SCALE)
    return np.clip(counts, 0, np.iinfo(np.int16).max).astype(np.int16)


def render(anatomy: Anatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Anatomy -> {"sa_ED", "sa_ES": int16 (X, Y, Z); "seg_sa_ED", "seg_sa_ES": uint8 (X, Y, Z) labels 0-3}.

    Slice 0 is the base, slice Z-1 the apex; ED and ES share pose, body, texture and coil field.
    """
    sx, sy, sz = pixel_spacing(shape)
    x = ((np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2) * sx)[:, None, None]
    y = ((np.arange(shape[1], dtype=np.float32) - (shape[1] - 1) / 2) * sy)[None, :, None]
    depth = ((np.arange(shape[2], dtype=np.float32) + 0.5) * sz)[None, None, :]
    body = _body_classes(shape, x, y, anatomy)
    frame = _heart_frame(x, y, depth, anatomy)
    wall = _wall(*frame, depth, anatomy)
    noise_field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(1.2, 1.2, 0.0), mode="wrap")
    texture = (noise_field / max(float(noise_field.std()), 1e-6)).astype(np.float32)
    ux, uy = x[..., 0] / FOV_MM, y[..., 0] / FOV_MM
    b = anatomy.bias
    bias_field = np.exp(b[0] * ux + b[1] * uy + b[2] * ux ** 2 + b[3] * uy ** 2 + b[4] * ux * uy)
    bias_field = bias_field[..., None].astype(np.float32)
    out = {}
    for phase in ("ED", "ES"):
        cls = body.copy()
        _heart_classes(cls, frame, wall, depth, anatomy, phase)
        out[f"sa_{phase}"] = _finish(_signal(cls, texture, anatomy), bias_field, anatomy, rng)
        out[f"seg_sa_{phase}"] = CLASS_LABEL[cls]
    return {key: out[key] for key in ("sa_ED", "sa_ES", "seg_sa_ED", "seg_sa_ES")}


def render_subject(attrs: Attributes, rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 8),
                   knobs: PhantomKnobs = KNOBS_OFF, preserved_ef: bool = False) -> dict[str, np.ndarray]:
    """Attributes -> the four volumes of one subject (see render); all randomness comes from rng."""
    anatomy = anatomy_from_attributes(attrs, rng, knobs, preserved_ef)
    return render(anatomy, tuple(int(s) for s in shape), rng)
