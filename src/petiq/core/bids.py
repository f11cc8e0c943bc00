"""The reconstructions as a BIDS dataset: the one place that spells its paths and writes its files.

The workflow's reconstructions form a raw BIDS dataset (``results/bids``), one reconstruction
entity per simulated dose, and the 0–1 images the readers see form a BIDS-derivatives dataset
beside it (``results/bids/derivatives/petiq``)::

    results/bids/dataset_description.json, README, participants.tsv, participants.json
    results/bids/sub-01/pet/sub-01_rec-dose005p0_pet.nii.gz (+ .json)
    results/bids/derivatives/petiq/dataset_description.json
    results/bids/derivatives/petiq/sub-01/pet/sub-01_rec-dose005p0_desc-norm01_pet.nii.gz (+ .json)

BIDS labels are letters and digits only, so the dose label ``005.0`` (:func:`petiq.core.doses.dose_label`)
becomes the reconstruction label ``dose005p0`` (:func:`rec_label`).

>>> rec_label(5), rec_label(0.5), rec_label(100)
('dose005p0', 'dose000p5', 'dose100p0')
>>> dose_from_rec_label("dose025p0")
25.0
>>> recon_image_path("results/bids", "sub-01", 5).as_posix()
'results/bids/sub-01/pet/sub-01_rec-dose005p0_pet.nii.gz'
>>> norm01_path("results/bids", "sub-01", 5).as_posix()
'results/bids/derivatives/petiq/sub-01/pet/sub-01_rec-dose005p0_desc-norm01_pet.nii.gz'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .doses import dose_label
from .errors import PetiqInputError
from .fileio import write_json, write_text, write_tsv

BIDS_VERSION = "1.10.0"
#: The derivatives dataset of the 0–1 images, relative to the BIDS root.
DERIVATIVES = Path("derivatives") / "petiq"
_REC = re.compile(r"^dose(\d{3})p(\d)$")


def _version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------- names and paths


def rec_label(dose: float) -> str:
    """The BIDS ``rec-`` label of a dose in percent: the dose label with ``p`` for the point."""
    return "dose" + dose_label(dose).replace(".", "p")


def dose_from_rec_label(label: str) -> float:
    """The dose in percent of a :func:`rec_label` (``dose005p0`` → 5.0)."""
    match = _REC.match(str(label))
    if not match:
        raise PetiqInputError(
            None,
            f"{label!r} is not a petiq reconstruction label",
            "use rec-doseNNNpN, e.g. rec-dose005p0 for 5 % of the counts",
        )
    return float(f"{match[1]}.{match[2]}")


def dose_label_from_rec_label(label: str) -> str:
    """``dose005p0`` → ``005.0`` (the spelling of the list-mode and sinogram paths)."""
    return dose_label(dose_from_rec_label(label))


def _stem(subject: str, dose: float) -> str:
    return f"{subject}_rec-{rec_label(dose)}"


def recon_image_path(root: str | Path, subject: str, dose: float) -> Path:
    """The reconstruction (kBq/mL) of one patient and dose in the BIDS dataset at ``root``."""
    return Path(root) / subject / "pet" / f"{_stem(subject, dose)}_pet.nii.gz"


def recon_sidecar_path(root: str | Path, subject: str, dose: float) -> Path:
    return Path(root) / subject / "pet" / f"{_stem(subject, dose)}_pet.json"


def derivatives_root(root: str | Path) -> Path:
    return Path(root) / DERIVATIVES


def norm01_path(root: str | Path, subject: str, dose: float) -> Path:
    """The 0–1 image (the reconstruction over its maximum) that readers see, in the derivatives."""
    return derivatives_root(root) / subject / "pet" / f"{_stem(subject, dose)}_desc-norm01_pet.nii.gz"


def recon_sidecar_of(image: str | Path) -> Path | None:
    """The reconstruction sidecar of an image: ``X_pet.json`` beside ``X_pet.nii[.gz]``; for a 0–1
    image (``X_desc-norm01_pet.nii.gz``) the one beside it if present, else its reconstruction's in
    the raw dataset when the image lies in petiq's derivatives (``<root>/derivatives/petiq/sub-*/pet``).
    None for a name that is no NIfTI.

    >>> recon_sidecar_of("b/derivatives/petiq/sub-01/pet/sub-01_rec-dose005p0_desc-norm01_pet.nii.gz").as_posix()
    'b/sub-01/pet/sub-01_rec-dose005p0_pet.json'
    """
    image = Path(image)
    name = image.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            break
    else:
        return None
    name = name[: -len(suffix)].replace("_desc-norm01_pet", "_pet") + ".json"
    beside = image.with_name(name)
    parts = image.parent.parts
    if beside.is_file() or len(parts) < 4 or tuple(parts[-4:-2]) != DERIVATIVES.parts:
        return beside
    return Path(*parts[:-4], *parts[-2:]) / name if len(parts) > 4 else Path(*parts[-2:]) / name


def patterns(root: str) -> dict[str, str]:
    """Path patterns with ``{subject}`` and ``{rec}`` wildcards (for the workflow's rules)."""
    stem = "{subject}/pet/{subject}_rec-{rec}"
    return {
        "image": f"{root}/{stem}_pet.nii.gz",
        "sidecar": f"{root}/{stem}_pet.json",
        "norm01": f"{root}/{DERIVATIVES.as_posix()}/{stem}_desc-norm01_pet.nii.gz",
    }


# ----------------------------------------------------------------------------- sidecar keys


def scanner_keys(scanner_name: str, source: str) -> dict:
    """``Manufacturer`` and ``ManufacturersModelName``: a real patient on the mMR preset was scanned
    on a Siemens Biograph mMR; everything else was simulated by petiq on one of its scanner models."""
    if source == "real" and scanner_name == "mmr":
        return {"Manufacturer": "Siemens", "ManufacturersModelName": "Biograph mMR"}
    model = {
        "mmr": "Biograph mMR geometry",
        "demo": "demo scanner (reduced Biograph mMR)",
        "tiny": "tiny test scanner",
    }.get(scanner_name, scanner_name)
    return {"Manufacturer": "petiq (simulated list-mode)", "ManufacturersModelName": f"petiq {model}"}


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def pet_metadata(participant: Mapping, dose: float, scanner_name: str) -> dict:
    """The sidecar keys of one reconstruction that come from the patient and the study design
    (the reconstruction adds its own: method, frames, decay correction, scan and injection times).

    ``participant``: a row of ``participants.tsv`` (``injected_mbq``, ``weight_kg``, ``uptake_min``,
    ``source``). The injected radioactivity is the dose's share of the full injection (the thinned
    list-mode is the scan that injection would have given). Time zero is the scan start; petiq's
    data keep no clock time, so ``TimeZero`` is a nominal 00:00:00 and every time is relative to it.
    """
    pid = str(participant["participant_id"])
    injected = _number(participant.get("injected_mbq"))
    weight = _number(participant.get("weight_kg"))
    if injected is None or weight is None:
        raise PetiqInputError(
            None,
            f"{pid}: injected_mbq {participant.get('injected_mbq')!r}, weight_kg {participant.get('weight_kg')!r}",
            "give both in the patient sheet (participants.tsv)",
        )
    out = {
        "participant_id": pid,
        "DoseFractionPercent": float(dose),
        "TracerName": "FDG",
        "TracerRadionuclide": "F18",
        "InjectedRadioactivity": injected * float(dose) / 100.0,
        "InjectedRadioactivityUnits": "MBq",
        "FullInjectedRadioactivity": injected,
        "InjectedMass": "n/a",
        "InjectedMassUnits": "n/a",
        "SpecificRadioactivity": "n/a",
        "SpecificRadioactivityUnits": "n/a",
        "ModeOfAdministration": "bolus",
        "TimeZero": "00:00:00",
        "BodyPart": "Brain",
        "BodyWeight": weight,
        "BodyWeightUnits": "kg",
        **scanner_keys(scanner_name, str(participant.get("source", "synthetic"))),
    }
    uptake = _number(participant.get("uptake_min"))
    if uptake is not None:  # the reconstruction's list-mode header, when it gives one, wins
        out["InjectionStart"] = -60.0 * uptake
    return out


#: The keys every 0–1 image shares, in one sidecar at the derivatives' root (BIDS inheritance:
#: ``desc-norm01_pet.json`` applies to every ``*_desc-norm01_pet.nii.gz`` below it).
NORM01_SIDECAR = {
    "Description": "the reconstruction divided by its maximum (0-1), as the readers see it; its "
    "reconstruction (same subject and rec label) is in the raw dataset two levels up",
    "Units": "arbitrary",
    "SkullStripped": False,
}


# ----------------------------------------------------------------------------- dataset files

PARTICIPANTS_JSON = {
    "participant_id": {"Description": "patient id"},
    "source": {
        "Description": "where the list-mode comes from",
        "Levels": {"synthetic": "simulated by petiq from a digital phantom", "real": "the site's own scan"},
    },
    "diagnosis": {
        "Description": "clinical diagnosis (drawn by the clinic mix for synthetic patients)",
        "Levels": {
            "CN": "cognitively normal",
            "AD": "Alzheimer's disease",
            "FTD": "frontotemporal dementia",
            "DLB": "dementia with Lewy bodies",
            "unknown": "not stated",
        },
    },
    "severity": {"Description": "severity of the diagnosis' hypometabolism pattern (0-1)"},
    "age": {"Description": "age", "Units": "year"},
    "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
    "weight_kg": {"Description": "body weight", "Units": "kg"},
    "injected_mbq": {"Description": "injected FDG activity (full dose)", "Units": "MBq"},
    "uptake_min": {"Description": "time from injection to scan start", "Units": "min"},
    "dose_per_kg": {"Description": "injected activity per body weight (full dose)", "Units": "MBq/kg"},
}

README = """\
petiq reconstructions
=====================

OP-OSEM reconstructions (kBq/mL) of brain FDG PET list-mode data, one reconstruction per
simulated injected dose, written by petiq {version} (a reproduction of Hopson et al. 2022).

Each lower dose is the full list-mode thinned to that share of its counts; the reconstruction
label names the dose in percent of the full dose with p for the point (rec-dose005p0: 5 %).
The sidecar's InjectedRadioactivity is that share of the full injection (FullInjectedRadioactivity).
Synthetic patients are simulated by petiq from digital phantoms (participants.tsv: source).

Time zero is the scan start: petiq keeps no clock times, so TimeZero is a nominal 00:00:00 and
ScanStart, InjectionStart and FrameTimesStart are seconds relative to it.

derivatives/petiq holds each reconstruction divided by its maximum (desc-norm01, 0-1): the images
the clinicians read and the networks are trained on.
"""


def dataset_description(*, derivative: bool = False, name: str = "petiq reconstructions") -> dict:
    """``dataset_description.json`` of the raw dataset, or of the derivatives (``derivative``)."""
    generated = [
        {"Name": "petiq", "Version": _version(), "Description": "list-mode thinning, histogramming and OP-OSEM"}
    ]
    out = {
        "Name": name if not derivative else f"{name}: 0-1 images",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "GeneratedBy": generated,
    }
    if derivative:
        out["DatasetLinks"] = {"raw": "../../"}  # the reconstructions: the BIDS root two levels up
    return out


def participants_table(participants: pd.DataFrame) -> pd.DataFrame:
    """petiq's participants table as BIDS wants it: missing values ``n/a``."""
    table = participants.copy()
    for col in table.columns:
        table[col] = table[col].astype(object).where(table[col].notna() & (table[col].astype(str) != ""), "n/a")
    return table


def write_dataset_files(root: str | Path, participants: pd.DataFrame) -> list[Path]:
    """Write the BIDS root's ``dataset_description.json``, ``README``, ``participants.tsv`` and
    ``participants.json``, and the derivatives' ``dataset_description.json`` (each atomically)."""
    root = Path(root)
    unknown = [c for c in participants.columns if c not in PARTICIPANTS_JSON]
    if unknown:
        raise PetiqInputError(
            None,
            f"participants columns {unknown} have no description",
            "describe them in petiq.core.bids.PARTICIPANTS_JSON",
        )
    paths = {
        "description": root / "dataset_description.json",
        "readme": root / "README",
        "participants": root / "participants.tsv",
        "participants_json": root / "participants.json",
        "derivatives": derivatives_root(root) / "dataset_description.json",
        "norm01_json": derivatives_root(root) / "desc-norm01_pet.json",
    }
    write_json(paths["description"], dataset_description())
    write_text(paths["readme"], README.format(version=_version()))
    write_tsv(paths["participants"], participants_table(participants))
    write_json(paths["participants_json"], {c: PARTICIPANTS_JSON[c] for c in participants.columns})
    write_json(paths["derivatives"], dataset_description(derivative=True))
    write_json(paths["norm01_json"], NORM01_SIDECAR)
    return list(paths.values())
