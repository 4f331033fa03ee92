"""Trains the learned initializer (gaussianvision.fit.learned_init) on photos that ship with
scikit-image, scikit-learn and matplotlib: `python -m gaussianvision.apps.initnet --out PATH`."""
