"""The proposal file: every image's RPN proposals as one flat array per field plus per-image offsets,
written as a stream and read one image at a time, so neither side holds the whole file in memory
(the 4-step recipe's detector stages train on them, paper §3.2).

Layout (the safetensors layout: raw little-endian arrays behind a JSON header; no code, no pickle)::

    8 bytes        uint64 H, little-endian: the header's length in bytes
    H bytes        JSON header, UTF-8, padded with spaces to HEADER_BYTES:
                   {"__metadata__": {"format": "frcnn-proposals-v2", "num_images": "N", "first_image": "F",
                                     "post_nms_top_n": "K"},
                    "boxes":   {"dtype": "F32", "shape": [T, 4],  "data_offsets": [0, 16 T]},
                    "scores":  {"dtype": "F32", "shape": [T],     "data_offsets": [16 T, 20 T]},
                    "offsets": {"dtype": "I64", "shape": [N + 1], "data_offsets": [20 T, 20 T + 8 (N + 1)]}}
    data           boxes, scores, offsets; data_offsets count from the end of the header

Image i of the file (dataset index F + i) owns rows ``offsets[i]:offsets[i + 1]`` of ``boxes``
(x1, y1, x2, y2 in the image's original pixels) and ``scores``. A file written by one process and
the concatenation of the shards that DDP ranks write (:func:`merge_proposal_files`) are the same bytes.

Writes go through :func:`frcnn.utils.atomic_io.atomic_write` (``.tmp``, fsync, rename): a killed writer
leaves no file, so the stage runs again. numpy only (no torch): a process that only moves proposals stays small. Reads use ``os.pread`` on the rows of one image (a DataLoader
worker opens its own descriptor); every structural problem raises
:class:`~frcnn.checkpoint.safe_load.UnreadableFileError` naming the file and the field.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.utils.atomic_io import atomic_write

PROPOSAL_FORMAT = "frcnn-proposals-v2"
HEADER_BYTES = 512  # fixed, so the data can be streamed before the totals in the header are known
COPY_CHUNK_BYTES = 8 << 20  # copies between files go through one buffer of this size
OFFSETS_CHUNK = 1 << 20  # offsets checked this many at a time (8 MiB)
FIELDS = (("boxes", "F32", 4), ("scores", "F32", 4), ("offsets", "I64", 8))  # (name, dtype, bytes per value)


def _header(num_images: int, first_image: int, post_nms_top_n: int, num_boxes: int) -> bytes:
    """The 8-byte length and the padded JSON header of a file with these totals."""
    fields, start = {}, 0
    for name, dtype, itemsize in FIELDS:
        shape = {"boxes": [num_boxes, 4], "scores": [num_boxes], "offsets": [num_images + 1]}[name]
        size = int(np.prod(shape)) * itemsize
        fields[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, start + size]}
        start += size
    meta = {"format": PROPOSAL_FORMAT, "num_images": str(num_images), "first_image": str(first_image),
            "post_nms_top_n": str(post_nms_top_n)}
    text = json.dumps({"__metadata__": meta, **fields}, separators=(",", ":")).encode()
    if len(text) > HEADER_BYTES:
        raise ValueError(f"proposal file header of {len(text)} bytes exceeds {HEADER_BYTES}")
    return struct.pack("<Q", HEADER_BYTES) + text.ljust(HEADER_BYTES, b" ")


def _copy_range(src_fd: int, src_offset: int, num_bytes: int, dst: IO[bytes]) -> None:
    """Append ``num_bytes`` of ``src_fd`` from ``src_offset`` to ``dst``, COPY_CHUNK_BYTES at a time."""
    while num_bytes > 0:
        chunk = os.pread(src_fd, min(num_bytes, COPY_CHUNK_BYTES), src_offset)
        if not chunk:
            raise OSError(f"unexpected end of file while copying ({num_bytes} bytes short)")
        dst.write(chunk)
        src_offset += len(chunk)
        num_bytes -= len(chunk)


def write_proposal_file(path: str | Path, images: Iterable[tuple[np.ndarray, np.ndarray]], num_images: int,
                        post_nms_top_n: int, first_image: int = 0) -> Path:
    """Write the proposals of ``num_images`` images, given in order by ``images`` as (boxes [n, 4],
    scores [n]) pairs (float32, original-image pixels), atomically to ``path``.

    Streaming: boxes go straight to the file, scores to ``<path>.scores.tmp`` (appended after the
    boxes at the end); memory holds one image and 8 bytes of offset per image. ``first_image``: the
    dataset index of the first image (a DDP shard). -> path."""
    path = Path(path)
    scores_tmp = path.with_name(path.name + ".scores.tmp")

    def write(f: IO[bytes]) -> None:
        offsets = np.zeros(num_images + 1, dtype="<i8")  # [N + 1]
        count = 0
        f.seek(8 + HEADER_BYTES)
        with open(scores_tmp, "w+b") as scores_file:
            for count, (boxes, scores) in enumerate(images, start=1):
                if count > num_images:
                    raise ValueError(f"{path}: more than the {num_images} images announced")
                boxes = np.ascontiguousarray(boxes, dtype="<f4").reshape(-1, 4)  # [n, 4]
                scores = np.ascontiguousarray(scores, dtype="<f4").reshape(-1)  # [n]
                if len(scores) != len(boxes):
                    raise ValueError(f"{path}: image {first_image + count - 1} has {len(boxes)} boxes "
                                     f"but {len(scores)} scores")
                f.write(boxes.data)  # the array's own bytes, no copy
                scores_file.write(scores.data)
                offsets[count] = offsets[count - 1] + len(boxes)
            if count != num_images:
                raise ValueError(f"{path}: proposals for {count} images, {num_images} expected")
            scores_file.flush()
            _copy_range(scores_file.fileno(), 0, int(offsets[-1]) * 4, f)
        f.write(offsets.data)
        f.seek(0)
        f.write(_header(num_images, first_image, post_nms_top_n, int(offsets[-1])))

    try:
        return atomic_write(path, write)
    finally:
        scores_tmp.unlink(missing_ok=True)


def merge_proposal_files(shard_paths: Sequence[str | Path], path: str | Path) -> Path:
    """Concatenate the shards (consecutive image ranges, in order) into one file at ``path``, the
    same bytes one process would have written: each field is copied shard after shard
    (COPY_CHUNK_BYTES at a time), offsets shifted by the rows before. Bounded memory at any size."""
    path = Path(path)
    shards = [ProposalFile(p) for p in shard_paths]
    if not shards:
        raise ValueError(f"{path}: no shards to merge")
    for before, after in itertools.pairwise(shards):
        if after.first_image != before.first_image + before.num_images:
            raise UnreadableFileError(f"{after.path}: starts at image {after.first_image}, but {before.path} ends "
                                      f"at image {before.first_image + before.num_images}: shards do not follow")
        if after.post_nms_top_n != before.post_nms_top_n:
            raise UnreadableFileError(f"{after.path}: post_nms_top_n {after.post_nms_top_n}, "
                                      f"{before.path}: {before.post_nms_top_n}")
    num_images = sum(s.num_images for s in shards)
    num_boxes = sum(s.num_boxes for s in shards)

    def write(f: IO[bytes]) -> None:
        f.write(_header(num_images, shards[0].first_image, shards[0].post_nms_top_n, num_boxes))
        for field in ("boxes", "scores"):
            for shard in shards:
                start, stop = shard.field_bytes[field]
                _copy_range(shard.fd(), start, stop - start, f)
        f.write(np.zeros(1, dtype="<i8").tobytes())
        rows_before = 0
        for shard in shards:
            for first in range(1, shard.num_images + 1, OFFSETS_CHUNK):
                chunk = shard.offsets_slice(first, min(first + OFFSETS_CHUNK, shard.num_images + 1))
                f.write((chunk + rows_before).astype("<i8").tobytes())
            rows_before += shard.num_boxes

    try:
        return atomic_write(path, write)
    finally:
        for shard in shards:
            shard.close()


def shard_range(num_images: int, rank: int, world: int, batch_size: int = 1) -> range:
    """The consecutive images rank ``rank`` of ``world`` proposes: whole batches of ``batch_size``
    (the batches one process would form, so the shards hold its bits), numbers of batches that
    differ by at most one."""
    num_batches = -(-num_images // batch_size)
    first, stop = rank * num_batches // world, (rank + 1) * num_batches // world
    return range(min(first * batch_size, num_images), min(stop * batch_size, num_images))


class ProposalFile:
    """A checked proposal file, read one image at a time (``os.pread``; nothing is loaded up front).

    Opening checks the header (format, dtypes, shapes, byte ranges that tile the file exactly) and the
    offsets (0 first, non-decreasing, the row count last). Picklable: a DataLoader worker opens its own
    descriptor. ``num_images``: the number of images expected (None: any).
    """

    def __init__(self, path: str | Path, num_images: int | None = None):
        self.path = Path(path)
        self._fd: int | None = None
        self._fd_pid = -1
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such proposal file")
        self._read_header()
        if num_images is not None and (self.num_images != num_images or self.first_image != 0):
            raise UnreadableFileError(f"{self.path} holds proposals for {self.num_images} images "
                                      f"(from image {self.first_image}), the dataset has {num_images}")
        self._check_offsets()

    def _bad(self, reason: str) -> UnreadableFileError:
        return UnreadableFileError(f"{self.path}: not a readable proposal file ({reason})")

    def _read_header(self) -> None:
        size = self.path.stat().st_size
        head = self._pread(8, 0, "the header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 1 << 20):
            raise self._bad(f"header length {header_len} does not fit a file of {size} bytes; "
                            f"format {PROPOSAL_FORMAT!r} expected")
        try:
            header = json.loads(self._pread(header_len, 8, "the header"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._bad(f"header is not JSON: {exc}") from None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != PROPOSAL_FORMAT:
            raise self._bad(f"__metadata__.format is not {PROPOSAL_FORMAT!r}")
        try:
            self.num_images, self.first_image, self.post_nms_top_n = (
                int(meta[key]) for key in ("num_images", "first_image", "post_nms_top_n"))
        except (KeyError, TypeError, ValueError):
            raise self._bad(f"__metadata__ needs integer num_images, first_image, post_nms_top_n: {meta}") from None
        self.data_start = 8 + header_len
        self.field_bytes: dict[str, tuple[int, int]] = {}  # field -> (start, stop) byte positions in the file
        end = 0
        for name, dtype, itemsize in sorted(FIELDS, key=lambda f: self._field_start(header, f[0])):
            entry = header[name]
            shape = entry.get("shape")
            if entry.get("dtype") != dtype or not isinstance(shape, list) or not all(
                    isinstance(n, int) and n >= 0 for n in shape):
                raise self._bad(f"field {name!r}: dtype {entry.get('dtype')!r} shape {shape!r}, {dtype} expected")
            start, stop = entry["data_offsets"]
            if start != end or stop - start != int(np.prod(shape)) * itemsize:
                raise self._bad(f"field {name!r}: bytes [{start}, {stop}) do not follow the previous field "
                                f"(at {end}) or do not hold shape {shape}")
            self.field_bytes[name] = (self.data_start + start, self.data_start + stop)
            end = stop
        if self.data_start + end != size:
            raise self._bad(f"{size} bytes, the header describes {self.data_start + end} (truncated or extended)")
        self.num_boxes = header["scores"]["shape"][0]
        if header["boxes"]["shape"] != [self.num_boxes, 4] or header["offsets"]["shape"] != [self.num_images + 1]:
            raise self._bad(f"shapes boxes {header['boxes']['shape']}, scores {header['scores']['shape']}, offsets "
                            f"{header['offsets']['shape']}: [T, 4], [T], [num_images + 1] = [{self.num_images + 1}] "
                            "expected")

    def _field_start(self, header: dict, name: str) -> int:
        entry = header.get(name)
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(v, int) for v in offsets)):
            raise self._bad(f"field {name!r} is missing or has no [start, stop] data_offsets")
        return offsets[0]

    def _check_offsets(self) -> None:
        previous = 0
        for first in range(0, self.num_images + 1, OFFSETS_CHUNK):
            chunk = self.offsets_slice(first, min(first + OFFSETS_CHUNK, self.num_images + 1))
            if (first == 0 and chunk[0] != 0) or chunk[0] < previous or (np.diff(chunk) < 0).any():
                raise self._bad(f"field 'offsets' is not 0 first and non-decreasing (near image {first})")
            previous = int(chunk[-1])
        if previous != self.num_boxes:
            raise self._bad(f"field 'offsets' ends at row {previous}, the file has {self.num_boxes} rows")

    def fd(self) -> int:
        """This process's descriptor of the file (a forked DataLoader worker opens its own)."""
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _pread(self, num_bytes: int, offset: int, what: str) -> bytes:
        data = os.pread(self.fd(), num_bytes, offset)
        if len(data) != num_bytes:
            raise self._bad(f"ends before {what} (byte {offset + len(data)})")
        return data

    def offsets_slice(self, first: int, stop: int) -> np.ndarray:
        """offsets[first:stop] as int64 [stop - first]."""
        start = self.field_bytes["offsets"][0] + 8 * first
        return np.frombuffer(self._pread(8 * (stop - first), start, "field 'offsets'"), dtype="<i8")

    def __len__(self) -> int:
        return self.num_images

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of the file: (boxes [n, 4] float32, scores [n] float32), numpy arrays."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"{self.path}: image {index} of {self.num_images}")
        row, row_stop = (int(v) for v in self.offsets_slice(index, index + 2))
        boxes = self._read_rows("boxes", row, np.empty((row_stop - row, 4), dtype="<f4"))  # [n, 4]
        scores = self._read_rows("scores", row, np.empty(row_stop - row, dtype="<f4"))  # [n]
        return boxes, scores

    def _read_rows(self, field: str, row: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` with the field's rows from ``row`` on, read straight into it."""
        offset = self.field_bytes[field][0] + row * (out.nbytes // max(len(out), 1))
        if out.nbytes and os.preadv(self.fd(), [out], offset) != out.nbytes:
            raise self._bad(f"ends inside field {field!r} (rows from {row})")
        return out

    def boxes(self, index: int) -> np.ndarray:
        return self.read(index)[0]

    def scores(self, index: int) -> np.ndarray:
        return self.read(index)[1]

    def close(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}
