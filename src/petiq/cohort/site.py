"""A site's own files for one real patient: what the patient sheet names, checked before any work.

A real row of ``config/patients.tsv`` names the scanner's exports for one acquisition (README,
"Bring your own data"):

* ``listmode``: the list-mode (``.l`` + ``.l.hdr``, or the DICOM export ``.dcm`` + ``.bf``);
* ``norm``: the scanner's component normalisation (``.n`` + ``.n.hdr``, or the norm DICOM
  ``.dcm``/``.IMA``), :mod:`petiq.recon.component_norm`;
* ``mumap``: the patient's μ-map (NIfTI in any orientation, e7 Interfile ``.v`` + ``.v.hdr``, or a
  DICOM file/folder), :mod:`petiq.recon.mumap`;
* ``hardware_mumaps`` (optional): the site's hardware μ-maps (head-and-neck coil, table), ``;``
  between paths, placed by the list-mode header's bed position.

:func:`check_site_files` reads each far enough to know it will work — headers, sizes, the scanner
each was made for, the μ-map's coverage of the field of view, the bed position the hardware needs —
so that a wrong file stops the workflow when it is parsed, not hours later in its job.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import PetiqInputError
from ..scanner.geometry import Scanner

__all__ = ["HARDWARE_SEPARATOR", "check_site_files", "hardware_paths"]

HARDWARE_SEPARATOR = ";"


def hardware_paths(value: str, root: Path | None = None) -> list[Path]:
    """The hardware μ-map paths of a sheet cell (``;`` between paths; empty: none), relative to ``root``."""
    parts = [p.strip() for p in str(value or "").split(HARDWARE_SEPARATOR) if p.strip()]
    return [(root / p) if root is not None else Path(p) for p in parts]


def check_site_files(listmode, norm, mumap, hardware_mumaps=(), scanner: Scanner | str = "mmr") -> None:
    """Check one real acquisition's files against ``scanner``; raise :class:`PetiqInputError` naming
    the file, the problem and the fix on the first problem.

    * the list-mode: header as the scanner writes it, for this scanner, data size
      (:func:`petiq.listmode.check_listmode`);
    * the norm: a component norm of this scanner (header, component sizes, values,
      quantification factor: :func:`petiq.recon.component_norm.read_component_norm`);
    * the μ-map: readable, cm⁻¹, covering the field of view where the patient is
      (:func:`petiq.recon.mumap.read_mumap`, :func:`petiq.recon.mumap.to_scanner_frame`);
    * hardware μ-maps: present and readable, and the list-mode header states the bed position
      that places them."""
    from ..listmode import check_listmode
    from ..recon import hardware_mumap
    from ..recon import mumap as mm
    from ..recon.component_norm import is_component_norm, read_component_norm
    from ..recon.corrections import check_mumap

    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    check_listmode(listmode, scanner)
    norm = Path(norm)
    if not is_component_norm(norm):
        raise PetiqInputError(
            norm,
            "is not a component norm file (.n with its .n.hdr, or the norm .dcm/.IMA)",
            "give the scanner's normalisation export for this acquisition's date",
        )
    read_component_norm(norm, scanner)
    mu, affine, _info = mm.read_mumap(mumap)
    check_mumap(mu, affine, scanner, mumap)
    mm.to_scanner_frame(mu, affine, scanner, mumap)
    hardware = [Path(p) for p in hardware_mumaps]
    if hardware:
        for p in hardware:
            if not p.exists():
                raise PetiqInputError(
                    p,
                    "hardware μ-map not found",
                    "correct the path in hardware_mumaps (relative to the workflow folder)",
                )
        bed_position_mm = hardware_mumap.read_bed_position_mm(listmode)
        if bed_position_mm is None:
            raise PetiqInputError(
                listmode,
                "hardware μ-maps are given, but the list-mode header has no "
                "'start horizontal bed position (mm)' to place them",
                "give the list-mode header as the scanner wrote it, or leave hardware_mumaps empty",
            )
        hardware_mumap.hardware_mumap(hardware, scanner, bed_position_mm)
