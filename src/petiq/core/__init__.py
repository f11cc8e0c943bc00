"""Infrastructure every stage shares: errors, file I/O, logs, seeds, doses, config, isotopes, BIDS naming."""
