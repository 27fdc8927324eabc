"""Shared code for the course "ResNet-50 vs ResNet-101: a multi-scale comparison".

Modules, one job each: ``config`` (profiles, seeding, device, paths), ``data`` (bundled set,
full download, user folders, transforms), ``models`` (from-scratch ResNet), ``plots``.
"""

__version__ = "0.1.0"
