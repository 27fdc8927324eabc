"""Rebuild the bundled data set ``data/`` from the 940-image Oxford-IIIT Pet sample.

Deterministic: the same source, seed and quality give the same bytes (fixed JPEG settings, no
EXIF, colour profiles, comments or timestamps; PNG masks without metadata).

    python scripts/build_bundled_data.py                 # defaults: ../shared/... -> data/
    python scripts/build_bundled_data.py --quality 80    # smaller files
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing course_utils

from course_utils.data.bundled import INDEX_COLUMNS, sha256_file  # noqa: E402
from course_utils.data.records import CLASSES  # noqa: E402
from course_utils.data.splits import SPLITS, stratified_split  # noqa: E402

SHORT_SIDE = 288  # pixels: the shorter side of every bundled image (never upsampled)
HELD_OUT = {"test": (0.25, 2), "val": (0.15, 1)}  # per breed: (fraction, minimum)
MASK_VALUES = {1: "pet", 2: "background", 3: "border / unclassified (official trimaps only)"}
SOURCE_COLUMNS = ("image", "mask", "breed", "species", "width", "height", "mask_kind")


def target_size(width: int, height: int) -> tuple[int, int]:
    """Size with the shorter side at SHORT_SIDE, or the same size if it is already shorter."""
    short = min(width, height)
    if short <= SHORT_SIDE:
        return width, height
    if width <= height:
        return SHORT_SIDE, round(height * SHORT_SIDE / width)
    return round(width * SHORT_SIDE / height), SHORT_SIDE


def convert_pair(
    image_in: Path, mask_in: Path, image_out: Path, mask_out: Path, quality: int
) -> tuple[int, int]:
    """Resize one image (Lanczos, RGB JPEG) and its mask (nearest, 8-bit PNG); return the size."""
    with Image.open(image_in) as source:
        orientation = source.getexif().get(0x0112, 1)
        if orientation not in (0, 1):  # the masks follow the stored pixels, not a rotated view
            raise SystemExit(f"{image_in}: EXIF orientation {orientation} is not supported.")
        image = source.convert("RGB")
    with Image.open(mask_in) as source:
        mask = np.asarray(source)  # raw values (palette indices if it were a palette PNG)
    if mask.shape != (image.height, image.width) or not set(np.unique(mask)) <= set(MASK_VALUES):
        raise SystemExit(
            f"{mask_in}: expected an {image.size} mask with values {set(MASK_VALUES)}."
        )
    size = target_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.info = {}  # drop ICC profile, comments, dpi: pixel values as stored, no metadata
    image.save(image_out, "JPEG", quality=quality, optimize=True, subsampling="4:2:0")
    mask_image = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    mask_image.save(mask_out, "PNG", optimize=True)
    return size


def write_readme(out: Path, rows: list[dict[str, str]], quality: int, seed: int) -> None:
    """``data/README.md``: what the set is, its counts, how it was made and how to rebuild it."""
    splits = Counter((r["split"], r["species"]) for r in rows)
    breeds = sorted({(r["species"], r["breed"]) for r in rows})
    kinds = Counter(r["mask_kind"] for r in rows)
    per_breed = Counter((r["breed"], r["split"]) for r in rows)
    megabytes = (
        sum((out / "pets" / r[column]).stat().st_size for r in rows for column in ("image", "mask"))
        / 1e6
    )
    lines = [
        f"# Bundled data: {len(rows)} Oxford-IIIT Pet images with pet masks",
        "",
        "A cats-vs-dogs sample of the Oxford-IIIT Pet data set (Parkhi et al., CVPR 2012)",
        "that ships with the course, so that every notebook runs without a download.",
        "Licence: CC BY-SA 4.0, see [LICENSE.md](LICENSE.md). Do not edit these files by hand:",
        "`course_utils.data` checks every file against the SHA-256 in `pets/index.csv`.",
        "",
        "## Layout",
        f"- `pets/images/NAME.jpg`: RGB JPEG, shorter side {SHORT_SIDE} px",
        "  (smaller originals keep their size).",
        "- `pets/masks/NAME.png`: 8-bit mask, same size as its image. Values:",
        *(f"  - {value} = {meaning}" for value, meaning in MASK_VALUES.items()),
        "  `course_utils.data.PetDataset(..., with_mask=True)` turns this into 1 = pet (1 or 3),",
        "  0 = background (2).",
        "- `pets/index.csv`: one row per image, with the columns",
        "  " + ", ".join(f"`{c}`" for c in INDEX_COLUMNS) + ".",
        "  Paths are relative to `pets/`; `label` is 0 = cat, 1 = dog; `mask_kind` is `trimap`",
        "  (official pixel trimap) or `polygon` (coarser outline of the official trimap,",
        "  values 1/2 only).",
        "",
        f"Images and masks: {megabytes:.1f} MB.",
        "",
        "## Counts",
        "| split | cats | dogs | total |",
        "|---|---:|---:|---:|",
        *(
            f"| {s} | {splits[s, 'cat']} | {splits[s, 'dog']} | "
            f"{splits[s, 'cat'] + splits[s, 'dog']} |"
            for s in SPLITS
        ),
        f"| all | {sum(r['species'] == 'cat' for r in rows)} | "
        f"{sum(r['species'] == 'dog' for r in rows)} | {len(rows)} |",
        "",
        f"{len(breeds)} breeds, every one in every split:",
        "",
        "| species | breed | train | val | test |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {sp} | {b} | " + " | ".join(str(per_breed[b, s]) for s in SPLITS) + " |"
            for sp, b in breeds
        ),
        "",
        "## How it was made",
        f"From a {len(rows)}-image sample of the official data set (official trimaps for "
        f"{kinds['trimap']} images,",
        f"polygon masks derived from them for {kinds['polygon']}), by "
        "`scripts/build_bundled_data.py`:",
        f"- images resized so the shorter side is {SHORT_SIDE} px (Lanczos; never upsampled) and",
        f"  saved as RGB JPEG, quality {quality}, without EXIF, colour profiles or comments",
        "  (pixel values as stored, as torchvision reads the full data set);",
        "- masks resized to the same size with nearest-neighbour interpolation (values kept);",
        "- splits stratified by breed: breeds in sorted order, each breed's sorted names shuffled",
        f"  with `random.Random({seed})`; per breed test = max(2, round(0.25 n)),",
        "  val = max(1, round(0.15 n)), the rest train.",
        "",
        "## Rebuild",
        "```bash",
        "python scripts/build_bundled_data.py   # --source, --out, --seed, --quality; see --help",
        "```",
        "The same source, seed, quality and Pillow version give byte-identical files.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


LICENSE_TEXT = """\
# Licence of the bundled data

The images and masks in `pets/` are resized copies of images and annotations from the
**Oxford-IIIT Pet Dataset**:

> O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar. "Cats and Dogs".
> IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2012.
> https://www.robots.ox.ac.uk/~vgg/data/pets/

The dataset is released under the Creative Commons Attribution-ShareAlike 4.0 International
licence (CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/). The copyright of each
image remains with its original owner.

Changes made here: images resized (shorter side 288 px) and re-encoded as JPEG without metadata;
masks resized to match; a train/val/test split and an index with checksums added
(`scripts/build_bundled_data.py`). These derived copies are distributed under the same licence,
CC BY-SA 4.0, with this attribution. The course's code is licensed separately (see the
repository's licence).
"""


def build(source: Path, out: Path, seed: int, quality: int) -> list[dict[str, str]]:
    """Write ``out/pets/{images,masks,index.csv}``, ``out/README.md`` and ``out/LICENSE.md``."""
    with (source / "annotations.csv").open(newline="") as file:
        reader = csv.DictReader(file)
        missing = set(SOURCE_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{source / 'annotations.csv'} lacks the column(s) {sorted(missing)}.")
        sources = sorted(reader, key=lambda r: r["image"])
    split_of = stratified_split(((r["image"], r["breed"]) for r in sources), HELD_OUT, seed)
    pets = out / "pets"
    for folder in ("images", "masks"):
        (pets / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for src in sources:
        name = Path(src["image"]).stem
        image_rel, mask_rel = f"images/{name}.jpg", f"masks/{name}.png"
        width, height = convert_pair(
            source / src["image"], source / src["mask"], pets / image_rel, pets / mask_rel, quality
        )
        rows.append(
            {
                "image": image_rel,
                "mask": mask_rel,
                "breed": src["breed"],
                "species": src["species"],
                "label": str(CLASSES.index(src["species"])),
                "split": split_of[src["image"]],
                "width": str(width),
                "height": str(height),
                "mask_kind": src["mask_kind"],
                "image_sha256": sha256_file(pets / image_rel),
                "mask_sha256": sha256_file(pets / mask_rel),
            }
        )
    written = {pets / r[column] for r in rows for column in ("image", "mask")}
    for stale in sorted(p for folder in ("images", "masks") for p in (pets / folder).iterdir()):
        if stale not in written:
            print(f"removing stale {stale}")
            stale.unlink()
    with (pets / "index.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_readme(out, rows, quality, seed)
    (out / "LICENSE.md").write_text(LICENSE_TEXT)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO_ROOT / "../shared/data/oxford-pets-sample",
        help="folder with annotations.csv, images/ and masks/ (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    parser.add_argument(
        "--quality", type=int, default=85, help="JPEG quality (default: %(default)s)"
    )
    args = parser.parse_args()
    source, out = args.source.resolve(), args.out.resolve()
    if not (source / "annotations.csv").is_file():
        raise SystemExit(f"No annotations.csv in {source}; pass --source.")
    rows = build(source, out, args.seed, args.quality)
    counts = Counter((r["split"], r["species"]) for r in rows)
    print(f"Wrote {len(rows)} images and masks to {out / 'pets'} (JPEG quality {args.quality}).")
    for split in SPLITS:
        cats, dogs = counts[split, "cat"], counts[split, "dog"]
        print(f"  {split:>5}: {cats + dogs:4d} images ({cats} cats, {dogs} dogs)")


if __name__ == "__main__":
    main()
