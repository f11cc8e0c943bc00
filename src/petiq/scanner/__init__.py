"""The scanner: crystal geometry, sinogram layout and presets, and the image frame."""
