"""Stages 5-6, patches and learning: backbones, ImageNet weights, experiments, splits, training, model cards, prediction."""
