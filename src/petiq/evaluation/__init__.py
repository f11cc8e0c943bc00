"""Stage 7, evaluation: metrics of trained runs against the readers' scores."""
