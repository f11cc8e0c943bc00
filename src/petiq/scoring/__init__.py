"""Stage 4, clinical scoring: reading sessions, ratings, rater agreement and the virtual reader."""
