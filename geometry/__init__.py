"""cardiac-ldm: geometry (masks -> control encodings, shape descriptors)."""
from geometry.descriptors import Descriptors, describe, describe_ed_es, descriptors_table
from geometry.encodings import CONTROL_TYPES, check_labels, control_channels, encode_control

__all__ = [
    "CONTROL_TYPES",
    "Descriptors",
    "check_labels",
    "control_channels",
    "describe",
    "describe_ed_es",
    "descriptors_table",
    "encode_control",
]
