"""The report templates a new department starts with: one structure per modality.

They hold section headings and prompts in brackets, not findings: the radiologist fills
each line. A template for a procedure type, or for a modality and body part, wins over
these (reporting.services.choose_template); a department edits or replaces them.
"""

from __future__ import annotations

from typing import NamedTuple


class Default(NamedTuple):
    name: str
    technique: str
    findings: str
    impression: str


RECOMMENDATIONS = "[Follow-up, further imaging or correlation, if any.]"
_RADIOGRAPH = Default(
    "Radiograph: default structure",
    "[Views] of the [region]. Comparison: [prior study or none].",
    "[Bones, joints, soft tissues; lungs, heart and mediastinum for the chest.]",
    "1. [Main finding.]",
)
DEFAULTS = {
    "CT": Default(
        "CT: default structure",
        "CT of the [region], [without/with] intravenous contrast; [reconstructions]. "
        "Comparison: [prior study or none].",
        "[Organ by organ, or system by system, for the region examined.]",
        "1. [Main finding, or no acute abnormality.]",
    ),
    "MR": Default(
        "MR: default structure",
        "MR of the [region] at [field strength]: [sequences], [without/with] gadolinium. "
        "Comparison: [prior study or none].",
        "[Structure by structure for the region examined.]",
        "1. [Main finding.]",
    ),
    "CR": _RADIOGRAPH,
    "DX": _RADIOGRAPH,
    "US": Default(
        "Ultrasound: default structure",
        "[Approach] ultrasound of the [region]. Comparison: [prior study or none].",
        "[Organ by organ, with measurements.]",
        "1. [Main finding.]",
    ),
    "MG": Default(
        "Mammography: default structure",
        "[Screening/diagnostic] mammography, [views]. Comparison: [prior study or none].",
        "Breast composition: [a/b/c/d]. [Masses, calcifications, asymmetries, "
        "architectural distortion, by side.]",
        "BI-RADS [0-6]: [assessment].",
    ),
    "NM": Default(
        "Nuclear medicine: default structure",
        "[Radiopharmaceutical], [activity] MBq, [route]; imaging at [times].",
        "[Distribution of the tracer.]",
        "1. [Main finding.]",
    ),
    "PT": Default(
        "PET/CT: default structure",
        "[Radiopharmaceutical], [activity] MBq; blood glucose [value]; uptake [minutes] min; "
        "low-dose CT for attenuation correction.",
        "[Region by region, with SUVmax of lesions.]",
        "1. [Main finding.]",
    ),
}
