"""The full Oxford-IIIT Pet path, for real, against an HTTP server on 127.0.0.1.

Archives in the official layout are built from bundled images; torchvision's
``OxfordIIITPet._RESOURCES`` is pointed at the local server, which can also misbehave.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from course_utils import config
from course_utils.data import (
    CachedPetDataset,
    DatasetUnavailable,
    PetDataset,
    PetRecord,
    cache_side_for,
    dataset_in_use,
    get_records,
    memory,
    oxford_pets_records,
    sources,
)
from course_utils.data import oxford as oxford_module
from course_utils.data.dataset import load_record
from course_utils.errors import CourseError

BUNDLED = config.repo_root() / "data" / "pets"
BREEDS = ("Abyssinian", "Bengal", "beagle", "pug")  # 2 cat, 2 dog breeds of the bundled set
PER_BREED = 6  # the first 5 go to trainval, the last to test
GPU = dataclasses.replace(config.get_profile("gpu"), max_images_per_split=None)


@dataclasses.dataclass
class Archives:
    """``images.tar.gz`` and ``annotations.tar.gz`` bytes, and the bundled rows they hold."""

    files: dict[str, bytes]
    rows: list[dict[str, str]]


@dataclasses.dataclass
class Server:
    """The running server: per archive an optional fault, and every path requested."""

    url: str
    faults: dict[str, str] = dataclasses.field(default_factory=dict)
    requests: list[str] = dataclasses.field(default_factory=list)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives() -> Archives:
    with (BUNDLED / "index.csv").open(newline="") as file:
        by_breed: dict[str, list[dict[str, str]]] = {}
        for row in csv.DictReader(file):
            by_breed.setdefault(row["breed"], []).append(row)
    rows = [row for breed in BREEDS for row in sorted(by_breed[breed], key=str)[:PER_BREED]]
    images: dict[str, bytes] = {}
    annotations: dict[str, bytes] = {}
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    for row in rows:
        name = Path(row["image"]).stem
        images[f"images/{name}.jpg"] = (BUNDLED / row["image"]).read_bytes()
        annotations[f"annotations/trimaps/{name}.png"] = (BUNDLED / row["mask"]).read_bytes()
        breed_id = BREEDS.index(row["breed"]) + 1
        species = 1 if row["species"] == "cat" else 2
        last = row is [r for r in rows if r["breed"] == row["breed"]][-1]
        lists["test" if last else "trainval"].append(f"{name} {breed_id} {species} {breed_id}")
    for split, lines in lists.items():
        annotations[f"annotations/{split}.txt"] = ("\n".join(lines) + "\n").encode()
    files = {"images.tar.gz": _tar(images), "annotations.tar.gz": _tar(annotations)}
    return Archives(files, rows)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundled data from the repo, artifacts in ``tmp_path``, no overrides, no remembered
    failures, and no way out to the internet."""
    monkeypatch.setenv(config.DATA_DIR_ENV, str(BUNDLED.parent))
    monkeypatch.setenv(config.ARTIFACTS_DIR_ENV, str(tmp_path / "artifacts"))
    for name in (config.OXFORD_DIR_ENV, sources.DATASET_ENV, oxford_module.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(oxford_module, "_failed_downloads", {})
    unreachable = tuple(
        ("http://127.0.0.1:9/" + Path(u).name, m) for u, m in OxfordIIITPet._RESOURCES
    )
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", unreachable)


@pytest.fixture
def server(archives: Archives, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Serve the archives on a free 127.0.0.1 port; ``_RESOURCES`` points there."""
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            name = self.path.lstrip("/")
            state.requests.append(name)
            fault = state.faults.get(name)
            if name not in archives.files or fault == "missing":
                self.send_error(404)
                return
            body = archives.files[name]
            if fault == "corrupt":
                body = body[:100] + bytes(b ^ 0xFF for b in body[100:200]) + body[200:]
            if fault == "stall-headers":
                state.release.wait(10)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault in ("drop", "stall"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if fault == "stall":
                    state.release.wait(10)
                return  # the server closes the connection: half the announced bytes sent
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    resources = tuple(
        (state.url + name, hashlib.md5(data).hexdigest()) for name, data in archives.files.items()
    )
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", resources)
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _stem(record: PetRecord) -> str:
    return record.image_path.stem


def test_download_extract_split_and_decode(
    server: Server, archives: Archives, tmp_path: Path
) -> None:
    root = tmp_path / "dl"
    train = oxford_pets_records("train", root=root)
    val = oxford_pets_records("val", root=root)
    test = oxford_pets_records("test", root=root)
    assert server.requests == ["images.tar.gz", "annotations.tar.gz"]  # once, then from disk
    base = root / "oxford-iiit-pet"
    assert (base / oxford_module.COMPLETE_MARKER).read_text() == "".join(
        f"{name} {hashlib.md5(data).hexdigest()}\n" for name, data in archives.files.items()
    )
    assert not list(base.glob("*.part"))
    assert (len(train), len(val), len(test)) == (16, 4, 4)  # per breed: 4 / 1 (15 %, min 1) / 1
    assert {r.breed for r in val} == set(BREEDS)
    assert {_stem(r) for r in train}.isdisjoint(map(_stem, val))
    assert val == oxford_pets_records("val", root=root)  # deterministic
    by_stem = {Path(row["image"]).stem: row for row in archives.rows}
    for record in train + val + test:
        row = by_stem[_stem(record)]
        assert record.label == int(row["label"]) and record.breed == row["breed"]
        assert record.mask_path == base / "annotations" / "trimaps" / f"{_stem(record)}.png"
    image, mask = load_record(test[0], with_mask=True)
    bundled = PetRecord(BUNDLED / by_stem[_stem(test[0])]["image"], 0, None, None)
    assert torch.equal(image, load_record(bundled)[0]) and mask is not None
    assert mask.shape == image.shape[-2:] and 0 < mask.float().mean() < 1  # pet and background
    item, label = PetDataset(test)[0]
    assert item.dtype == torch.uint8 and item.shape[0] == 3 and label == test[0].label


def test_gpu_profile_downloads_into_artifacts(server: Server) -> None:
    assert dataset_in_use(GPU) == "oxford-iiit-pet"
    records, source = get_records(GPU, "val", dataset="oxford-iiit-pet")
    assert len(records) == 4 and "full Oxford-IIIT Pet" in source
    assert oxford_module.is_complete(config.artifacts_dir() / "downloads" / "oxford-iiit-pet")


FAULT_MESSAGES = {
    "corrupt": r"images\.tar\.gz from .* is corrupt: its MD5 is",
    "drop": r"closed after [\d,]+ of [\d,]+ bytes",  # Content-Length sent, then half the body
    "stall": r"sent no data for 1 s \(\$COURSE_DOWNLOAD_TIMEOUT_S",  # half the body, then quiet
    "stall-headers": r"sent no data for 1 s",
    "missing": r"HTTP 404",
}


@pytest.mark.parametrize("fault", FAULT_MESSAGES)
def test_server_faults_are_clear_and_leave_nothing_half_done(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setenv(oxford_module.TIMEOUT_ENV, "1")
    server.faults["images.tar.gz"] = fault
    started = time.monotonic()
    with pytest.raises(DatasetUnavailable, match=FAULT_MESSAGES[fault]) as caught:
        oxford_pets_records("train", root=tmp_path)
    assert time.monotonic() - started < 5
    assert "Full Oxford-IIIT Pet could not be downloaded" in str(caught.value)
    assert "COURSE_OXFORD_DIR" in str(caught.value)  # the way out without internet
    base = tmp_path / "oxford-iiit-pet"
    assert sorted(p.name for p in base.iterdir()) == []  # no archive, no .part, nothing extracted
    with pytest.raises(DatasetUnavailable, match="download=False"):
        oxford_pets_records("train", root=tmp_path, download=False)


def test_a_failure_is_remembered_for_a_while_then_retried(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.faults["annotations.tar.gz"] = "drop"
    with pytest.raises(DatasetUnavailable, match="closed after"):
        oxford_pets_records("test", root=tmp_path)
    assert server.requests == ["images.tar.gz", "annotations.tar.gz"]
    server.faults.clear()
    with pytest.raises(DatasetUnavailable, match=r"s ago\). It is tried again 10 min after"):
        oxford_pets_records("test", root=tmp_path)
    with pytest.raises(DatasetUnavailable, match="restart the Python process"):
        oxford_pets_records("test", root=tmp_path / "elsewhere")  # remembered per URL
    assert len(server.requests) == 2  # nothing asked of the server in the meantime
    monkeypatch.setattr(oxford_module, "RETRY_AFTER_S", 0.0)
    assert len(oxford_pets_records("test", root=tmp_path)) == 4
    assert server.requests[2:] == ["annotations.tar.gz"]  # images.tar.gz was kept (MD5 checked)


def test_an_unfinished_extraction_is_not_taken_for_the_data_set(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    oxford_pets_records("test", root=tmp_path)
    base = tmp_path / "oxford-iiit-pet"
    (base / oxford_module.COMPLETE_MARKER).unlink()  # as if extraction stopped half-way
    for image in sorted((base / "images").iterdir())[::2]:
        image.unlink()
    shutil.rmtree(base / "annotations" / "trimaps")
    with pytest.raises(DatasetUnavailable, match=r"is incomplete \(no \.complete file"):
        oxford_pets_records("test", root=tmp_path, download=False)
    records = oxford_pets_records("train", root=tmp_path)
    assert "holds no finished download" in caplog.text
    assert len(server.requests) == 2  # extracted again from the kept archives
    assert all(r.image_path.is_file() and r.mask_path.is_file() for r in records)
    assert oxford_module.is_complete(base)


def _extract(archives: Archives, folder: Path) -> None:
    for data in archives.files.values():
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(folder, filter="data")


@pytest.mark.parametrize("nested", ["", "oxford-iiit-pet"])
def test_a_copy_on_disk_is_used_without_downloading(
    server: Server, archives: Archives, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nested: str
) -> None:
    _extract(archives, tmp_path / "copy" / nested)
    monkeypatch.setenv(config.OXFORD_DIR_ENV, str(tmp_path / "copy"))
    test = oxford_pets_records("test")
    assert len(test) == 4 and test[0].image_path.parent == tmp_path / "copy" / nested / "images"
    assert dataset_in_use(GPU) == "oxford-iiit-pet"
    assert len(get_records(GPU, "train", dataset="oxford-iiit-pet")[0]) == 16
    assert server.requests == [] and not (config.artifacts_dir() / "downloads").exists()


def test_a_copy_on_disk_with_the_wrong_layout_says_what_is_missing(
    archives: Archives, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _extract(archives, tmp_path / "copy")
    (tmp_path / "copy" / "annotations" / "test.txt").unlink()
    shutil.rmtree(tmp_path / "copy" / "annotations" / "trimaps")
    monkeypatch.setenv(config.OXFORD_DIR_ENV, str(tmp_path / "copy"))
    missing = r"lacks annotations/test\.txt, annotations/trimaps\. Point it at the folder"
    with pytest.raises(DatasetUnavailable, match=missing):
        oxford_pets_records("train")
    with pytest.raises(DatasetUnavailable, match="lacks"):  # no quiet fallback: it was asked for
        dataset_in_use(GPU)
    monkeypatch.setenv(config.OXFORD_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetUnavailable, match="lacks images, annotations/trainval.txt"):
        oxford_pets_records("test")


def test_course_dataset_overrides_the_profile(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sources.DATASET_ENV, "bundled")
    assert dataset_in_use(GPU) == "bundled"
    assert server.requests == []  # the gpu profile did not try the download
    monkeypatch.setenv(sources.DATASET_ENV, "oxford-iiit-pet")
    assert dataset_in_use(config.get_profile("smoke")) == "oxford-iiit-pet"
    assert server.requests == ["images.tar.gz", "annotations.tar.gz"]
    monkeypatch.setenv(sources.DATASET_ENV, "imagenet")
    with pytest.raises(CourseError, match=r"\$COURSE_DATASET asks for unknown dataset 'imagenet'"):
        dataset_in_use(GPU)


def test_download_failure_falls_back_to_bundled(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults["images.tar.gz"] = "missing"
    assert dataset_in_use(GPU) == "bundled"
    assert (
        "HTTP 404" in caplog.text and "Falling back to the bundled 940-image sample" in caplog.text
    )


def test_download_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert oxford_module.download_timeout() == oxford_module.DOWNLOAD_TIMEOUT_S
    monkeypatch.setenv(oxford_module.TIMEOUT_ENV, "2.5")
    assert oxford_module.download_timeout() == 2.5
    monkeypatch.setenv(oxford_module.TIMEOUT_ENV, "soon")
    with pytest.raises(DatasetUnavailable, match="positive number of seconds, not 'soon'"):
        oxford_pets_records("test")


def test_cache_bytes_per_oxford_sized_image(tmp_path: Path) -> None:
    """Oxford's typical 500 x 375 px JPEG: 562,500 bytes cached at 224 px training (438 px
    side, never enlarged); a 1000 x 750 one shrinks to 438 x 584."""
    records = []
    for i, size in enumerate([(500, 375), (375, 500), (1000, 750)]):
        path = tmp_path / f"Bengal_{i}.jpg"
        Image.effect_noise(size, 64).convert("RGB").save(path, quality=90)
        records.append(PetRecord(path, 0, "Bengal", None))
    side = cache_side_for(224)
    assert side == 438
    per_image = [CachedPetDataset([r], cache_side=side).nbytes for r in records]
    assert per_image == [562_500, 562_500, 438 * 584 * 3]
    assert max(per_image) <= memory.cache_bytes_bound(side, 1)


def test_capped_cache_side_keeps_the_full_set_in_budget(caplog: pytest.LogCaptureFixture) -> None:
    assert memory.capped_cache_side(438, 940) == 438 and not caplog.text  # bundled: no cap
    for side in (cache_side_for(224), cache_side_for(224, (0.08, 1.0))):
        capped = memory.capped_cache_side(side, 7349)
        assert capped == 382
        assert memory.cache_bytes_bound(capped, 7349) <= memory.CACHE_BUDGET_BYTES
        assert memory.cache_bytes_bound(capped + 1, 7349) > memory.CACHE_BUDGET_BYTES
    assert "caching at 382 px instead" in caplog.text and "4.0 GiB budget" in caplog.text
    assert memory.capped_cache_side(915, 3680) == 540  # train + val only
    assert memory.capped_cache_side(915, 100, budget_bytes=2**20) == 51


def test_gpu_profile_on_a_cpu_machine_falls_back_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's command on a machine without CUDA or internet: the download fails (here:
    a closed port on 127.0.0.1), the bundled set is announced, one short epoch trains."""
    from course_utils.cli import main

    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    monkeypatch.setenv("CI", "1")  # no progress bars
    argv = ["train", "--arch", "resnet18", "--profile", "gpu", "--epochs", "1"]
    argv += ["--image-size", "64", "--batch-size", "8", "--output", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Falling back to the bundled 940-image sample" in out
    assert "profile: gpu" in out and "device: cpu" in out
    assert "recipe: resnet18 scratch, 64 px, 1 epoch, batch 8" in out
    last = Path(out.splitlines()[-1])
    assert last == tmp_path / "run" / "last.pt" and last.is_file()
