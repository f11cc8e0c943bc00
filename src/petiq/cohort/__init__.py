"""Stage 1, the cohort: the patient sheet, the anatomy atlas, the digital phantoms, a site's own files."""
