"""Shared code for the course "ResNet-50 vs ResNet-101: a multi-scale comparison".

Modules, one job each: ``config`` (profiles, seeding, device, paths), ``data`` (bundled set,
full download, user folders, transforms, in-memory cache), ``models`` (from-scratch ResNet),
``cost`` (FLOPs, receptive field, latency), ``train`` (the training loop), ``checkpoints``
(atomic saving, safe loading), ``zoo`` (``load_or_train``: trained networks on demand),
``evaluate`` (predictions, accuracy with bootstrap intervals), ``plots``, and ``cli``
(``python -m course_utils train | evaluate | predict``).
"""

from course_utils.safety import warn_about_vulnerable_versions

__version__ = "0.1.0"
warn_about_vulnerable_versions()  # torch and Pillow below their fixed releases: say so
