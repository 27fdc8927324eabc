"""Shared code for the course "ResNet-50 vs ResNet-101: a multi-scale comparison".

Modules, one job each: ``config`` (profiles, seeding, device, paths), ``data`` (bundled set,
full download, user folders, transforms, in-memory cache), ``models`` (from-scratch ResNet),
``cost`` (FLOPs, receptive field, latency), ``train`` (the training loop), ``checkpoints``
(atomic saving, safe loading), ``zoo`` (``load_or_train``: trained networks on demand),
``evaluate`` (predictions, accuracy with bootstrap intervals), ``plots``, and ``cli``
(``python -m course_utils train | evaluate | predict``).
"""

__version__ = "0.1.0"
