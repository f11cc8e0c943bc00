"""The scanner's frame and the NIfTI RAS+ affine of every image; inputs mapped by their affine.

Frame (``docs/frame.md``; the crystals in :mod:`petiq.scanner.geometry`)
--------------------------------------------------------------
petiq's image arrays are indexed ``[ix, iy, iz]`` along the scanner's x, y and z, voxel centres
``((ix - (nx - 1)/2) vx, (iy - (ny - 1)/2) vy, (iz - (nz - 1)/2) vz)`` mm from the scanner centre. The
scanner frame is NiftyPET's (e7's): its projector (``niftypet/nipet/prj/src/tprj.cu``) puts image
column ``u`` along +x and row ``v`` along -y, and it writes an image ``im[z, v, u]`` as
``array2nii(im[::-1, ::-1, :], B)`` (``prj/mmrrec.py``; ``miutil.imio.nii.array2nii`` transposes to
``[u, v', z']``) with ``B = diag(-vx, vy, vz)`` (``img/mmrimg.py`` ``image_affine``). So NIfTI
``x = -x_scanner``, ``y = +y_scanner``, ``z = -z_scanner``: for a **head-first supine** (HFS) patient
the scanner's +x points to the patient's left, +y anterior and +z (growing ring and slice number)
towards the feet. :data:`SCANNER_TO_RAS` is that map, a rotation by 180 degrees about y.

The affine petiq writes is the exactly centred grid its projector uses; NiftyPET's ``image_affine``
offsets (``0.5*N*v``, ``(-0.5*N + 1)*v``) put its voxel centres half a voxel from its own projector's
(column ``u`` spans ``[(u - N/2) v, (u - N/2 + 1) v)``), and it adds the bed position; petiq's origin
is the scanner centre. Other patient orientations (``%patient orientation`` in the list-mode header,
DICOM Patient Position) are refused (:func:`check_patient_orientation`).

Inputs (activity, μ-map) are mapped onto a scanner grid through the affine they carry
(:func:`to_scanner_grid`), whatever their axis order, flips, offset or rotation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path

__all__ = [
    "PATIENT_ORIENTATION",
    "SCANNER_TO_RAS",
    "check_patient_orientation",
    "grid_like",
    "is_scanner_grid",
    "nifti_affine",
    "nifti_image",
    "scanner_grid_affine",
    "to_scanner_grid",
    "write_nifti",
]

#: Scanner (x, y, z) mm -> NIfTI RAS+ mm for a head-first supine patient: NiftyPET's image affine
#: ``diag(-vx, vy, vz)`` on its ``[x, -y, -z]``-flipped array (``img/mmrimg.py`` ``image_affine``,
#: ``prj/mmrrec.py`` ``array2nii(im[::-1, ::-1, :], B)``).
SCANNER_TO_RAS = np.diag([-1.0, 1.0, -1.0])

#: The one patient orientation petiq's frame holds for (DICOM Patient Position / Interfile
#: ``%patient orientation``): head first, supine.
PATIENT_ORIENTATION = "HFS"

#: Largest |cosine| between two voxel axes of an input affine (a shear), and the relative size of
#: the smallest axis below which the affine counts as singular.
_SHEAR_TOLERANCE = 1e-3
_SINGULAR_TOLERANCE = 1e-6
#: An input axis must run within 30 degrees of a scanner axis for :func:`grid_like`.
_MAX_OBLIQUE_COS = float(np.cos(np.radians(30.0)))
#: Largest share of an input's total (|value| sum) allowed to fall outside the target grid.
_LOST_TOLERANCE = 1e-3


def scanner_grid_affine(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """RAS+ affine (4 x 4) of a petiq image array ``[ix, iy, iz]`` on the centred scanner grid.

    >>> scanner_grid_affine((4, 4, 3), (2.0, 2.0, 3.0))
    array([[-2.,  0.,  0.,  3.],
           [ 0.,  2.,  0., -3.],
           [ 0.,  0., -3.,  3.],
           [ 0.,  0.,  0.,  1.]])
    """
    shape = np.asarray(shape, dtype=float)
    voxel = np.asarray(voxel_size_mm, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = SCANNER_TO_RAS @ np.diag(voxel)
    affine[:3, 3] = SCANNER_TO_RAS @ (-0.5 * (shape - 1.0) * voxel)
    return affine


def nifti_image(data: np.ndarray, affine: np.ndarray):
    """A NIfTI-1 image with ``affine`` as both its qform and sform (code 1, "scanner anatomical",
    as NiftyPET's ``array2nii``), units mm and s."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` with ``affine`` (:func:`nifti_image`) atomically."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(nifti_image(data, affine), str(tmp))


def load_nifti(path: str | Path, what: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data as float32, checked RAS+ affine)`` of a NIfTI; an unreadable file is a
    :class:`PetiqInputError` naming the ``what`` with ``fix``."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise PetiqInputError(path, f"cannot read the {what} ({error})", fix) from None
    return data, nifti_affine(img, path)


def nifti_affine(img, path=None) -> np.ndarray:
    """The checked voxel -> RAS+ mm affine of a nibabel image: its sform, else its qform.

    Raises :class:`PetiqInputError` when neither code is set (the orientation is unknown), or the
    affine is not finite, singular, or shears the voxel axes."""
    header = img.header
    try:
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    except (KeyError, ValueError, TypeError):  # not a NIfTI header: nibabel's affine is all there is
        sform_code = qform_code = 1
    if sform_code <= 0 and qform_code <= 0:
        raise PetiqInputError(
            path,
            "the NIfTI header sets neither a qform nor an sform (both codes 0), so "
            "where its voxels lie in the patient is unknown",
            "write the image with its RAS+ affine and set the sform/qform code (e.g. "
            "nibabel img.set_sform(affine, code=1))",
        )
    return check_affine(img.affine, path)


def check_affine(affine, path=None) -> np.ndarray:
    """``affine`` as a float64 4 x 4 after checking it maps voxels to mm sensibly (finite,
    non-singular, orthogonal voxel axes); raises :class:`PetiqInputError` naming ``path``."""
    affine = np.asarray(affine, dtype=float)
    fix = "give the image with its true RAS+ affine (sform/qform) from the scanner or converter"
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise PetiqInputError(path, f"the image affine is not a finite 4 x 4 matrix: {affine.tolist()}", fix)
    axes = affine[:3, :3]
    size = np.sqrt((axes**2).sum(axis=0))
    if size.min() <= _SINGULAR_TOLERANCE * max(size.max(), 1e-30) or abs(np.linalg.det(axes)) <= (
        _SINGULAR_TOLERANCE * float(np.prod(size))
    ):
        raise PetiqInputError(path, f"the image affine is singular (voxel axes {axes.tolist()})", fix)
    unit = axes / size
    cos = unit.T @ unit - np.eye(3)
    if np.abs(cos).max() > _SHEAR_TOLERANCE:
        raise PetiqInputError(
            path,
            f"the image affine shears the voxel axes (|cos| between axes up to "
            f"{np.abs(cos).max():.3g}; a gantry-tilted CT?)",
            "resample the image onto an orthogonal grid first",
        )
    return affine


def is_scanner_grid(shape: Sequence[int], affine: np.ndarray) -> bool:
    """True when ``affine`` is the centred scanner grid's (:func:`scanner_grid_affine`) for ``shape``
    and its own voxel sizes: the array can be used as it is."""
    affine = np.asarray(affine, dtype=float)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return bool(np.allclose(affine, scanner_grid_affine(shape, voxel), atol=1e-3 * float(voxel.min())))


def grid_like(
    shape: Sequence[int], affine: np.ndarray, path=None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and voxel size of the centred scanner grid nearest to an input grid: each input axis
    goes to the scanner axis it runs closest to (within 30 degrees), with its voxel count and size."""
    affine = check_affine(affine, path)
    in_scanner = SCANNER_TO_RAS.T @ affine[:3, :3]  # columns: voxel axes in scanner mm
    size = np.sqrt((in_scanner**2).sum(axis=0))
    cosine = np.abs(in_scanner) / size
    owner = np.argmax(cosine, axis=0)  # scanner axis of each input axis
    if sorted(owner.tolist()) != [0, 1, 2] or cosine.max(axis=0).min() < _MAX_OBLIQUE_COS:
        raise PetiqInputError(
            path,
            f"the image axes are oblique (more than 30 degrees from the scanner's; "
            f"affine {np.round(affine, 4).tolist()}): no axis-aligned grid of its own fits",
            "resample the image onto axis-aligned voxels first",
        )
    out_shape, out_voxel = [0, 0, 0], [0.0, 0.0, 0.0]
    for i, axis in enumerate(owner):
        out_shape[axis], out_voxel[axis] = int(shape[i]), float(size[i])
    return tuple(out_shape), tuple(out_voxel)


def to_scanner_grid(
    data: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    *,
    order: int = 1,
    path=None,
    what: str = "image",
) -> np.ndarray:
    """``data`` (voxel -> RAS+ mm ``affine``) on the centred scanner grid ``(shape, voxel_size_mm)``,
    float32. Identical grids pass unchanged; otherwise each target voxel centre is looked up in the
    input through the affines (``scipy.ndimage.affine_transform``, spline ``order``, zero outside).

    Raises :class:`PetiqInputError` when more than 0.1 % of the input (sum of |values|) lies outside
    the target grid, rather than cutting the object silently."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise PetiqInputError(path, f"the {what} has shape {data.shape}, expected a 3-D volume", "give a 3-D NIfTI")
    affine = check_affine(affine, path)
    shape = tuple(int(s) for s in shape)
    target = scanner_grid_affine(shape, voxel_size_mm)
    voxel = np.asarray(voxel_size_mm, dtype=float)
    if data.shape == shape and np.allclose(affine, target, atol=1e-3 * float(voxel.min())):
        return data
    _check_inside(data, affine, target, shape, path, what)
    m = np.linalg.inv(affine) @ target  # target voxel -> input voxel
    return ndimage.affine_transform(
        data, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order, mode="constant", cval=0.0
    ).astype(np.float32)


def _check_inside(data, affine, target, shape, path, what) -> None:
    nonzero = np.nonzero(data)
    if not nonzero[0].size:
        return
    ijk = np.vstack([*nonzero, np.ones(nonzero[0].size)])
    pos = (np.linalg.inv(target) @ affine @ ijk)[:3]
    outside = np.any((pos < -0.5) | (pos > np.asarray(shape)[:, None] - 0.5), axis=0)
    weight = np.abs(data[nonzero]).astype(np.float64)
    lost = float(weight[outside].sum() / weight.sum())
    if lost > _LOST_TOLERANCE:
        raise PetiqInputError(
            path,
            f"{100 * lost:.2g} % of the {what} lies outside the scanner grid "
            f"{shape} it is mapped onto (check its affine: is the object centred "
            "in the scanner, are its units mm?)",
            "give the image with its true affine, the object within the scanner's field of view",
        )


def check_patient_orientation(header: Mapping[str, str], where=None) -> None:
    """Refuse list-mode whose ``%patient orientation`` is not head-first supine: petiq's image frame
    (and so every affine it writes) holds for HFS only. A missing or empty key is taken as HFS."""
    from ..listmode.header import header_value

    value = (header_value(header, "patient orientation") or "").strip().upper()
    if value and value != PATIENT_ORIENTATION:
        raise PetiqInputError(
            where,
            f"'%patient orientation' is {value!r}; petiq's image frame and NIfTI "
            f"affines assume head-first supine ({PATIENT_ORIENTATION})",
            "give a head-first supine acquisition (other orientations are not supported)",
        )
