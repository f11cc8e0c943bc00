"""petiq — an open, end-to-end reproduction of Hopson et al. 2022 (IEEE TRPMS):
CNNs that predict clinicians' image-quality scores of brain FDG PET, from list-mode data to figures.

The library never imports Snakemake; the workflow under ``workflow/`` calls it.
"""

__version__ = "0.1.0"
