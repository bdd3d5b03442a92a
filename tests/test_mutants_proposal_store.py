"""frcnn.engine.proposal_store where tests/test_proposal_store.py left mutants alive (scripts/mutation_test.sh):
the file's exact bytes (read back by the safetensors library as well), copies and offset checks across chunk
boundaries, every way a writer can be given the wrong images, and every check of a damaged file with the
reason it names."""

import json
import os
import pickle
import struct

import numpy as np
import pytest

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.utils.atomic_io import WriteFailed
from frcnn.engine import proposal_store
from frcnn.engine.proposal_store import (
    HEADER_BYTES,
    PROPOSAL_FORMAT,
    ProposalFile,
    merge_proposal_files,
    shard_range,
    write_proposal_file,
)

BOXES = [np.array([[1.5, 2, 3, 4]], dtype=np.float32), np.zeros((0, 4), dtype=np.float32),
         np.array([[5, 6, 7, 8], [9, 10, 11, 12.25]], dtype=np.float32)]
SCORES = [np.array([0.5], dtype=np.float32), np.zeros(0, dtype=np.float32), np.array([0.75, 0.25], dtype=np.float32)]


def three_images(path, first_image=5, post_nms_top_n=7):
    return write_proposal_file(path, iter(zip(BOXES, SCORES)), 3, post_nms_top_n, first_image=first_image)


def test_the_file_holds_exactly_the_documented_bytes(tmp_path):
    path = three_images(tmp_path / "p.safetensors")
    header = (b'{"__metadata__":{"format":"frcnn-proposals-v2","num_images":"3","first_image":"5",'
              b'"post_nms_top_n":"7"},"boxes":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},'
              b'"scores":{"dtype":"F32","shape":[3],"data_offsets":[48,60]},'
              b'"offsets":{"dtype":"I64","shape":[4],"data_offsets":[60,92]}}')
    data = (np.concatenate(BOXES).astype("<f4").tobytes() + np.concatenate(SCORES).astype("<f4").tobytes()
            + np.array([0, 1, 1, 3], dtype="<i8").tobytes())
    assert path.read_bytes() == struct.pack("<Q", HEADER_BYTES) + header.ljust(HEADER_BYTES, b" ") + data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]  # the scores' side file is gone


def test_the_safetensors_library_reads_the_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = safetensors_numpy.load_file(str(three_images(tmp_path / "p.safetensors")))
    np.testing.assert_array_equal(tensors["boxes"], np.concatenate(BOXES))
    np.testing.assert_array_equal(tensors["scores"], np.concatenate(SCORES))
    assert tensors["offsets"].tolist() == [0, 1, 1, 3] and tensors["offsets"].dtype == np.int64


def test_an_opened_file_reports_its_totals_and_reads_each_image(tmp_path):
    proposals = ProposalFile(three_images(tmp_path / "p", first_image=0))
    assert (len(proposals), proposals.num_images, proposals.first_image, proposals.post_nms_top_n) == (3, 3, 0, 7)
    assert proposals.num_boxes == 3 and proposals.data_start == 8 + HEADER_BYTES
    assert proposals.field_bytes == {"boxes": (520, 568), "scores": (568, 580), "offsets": (580, 612)}
    for index in range(3):
        boxes, scores = proposals.read(index)
        assert boxes.dtype == np.float32 and boxes.shape == BOXES[index].shape and scores.shape == SCORES[index].shape
        np.testing.assert_array_equal(boxes, BOXES[index])
        np.testing.assert_array_equal(proposals.scores(index), SCORES[index])
        np.testing.assert_array_equal(proposals.boxes(index), BOXES[index])
    assert proposals.offsets_slice(1, 4).tolist() == [1, 1, 3]
    for index in (-1, 3):
        with pytest.raises(IndexError, match=rf"p: image {index} of 3$"):
            proposals.read(index)
    proposals.close()
    proposals.close()  # twice is fine
    np.testing.assert_array_equal(proposals.boxes(2), BOXES[2])  # reopens


def test_copies_and_offset_checks_go_in_chunks(tmp_path, monkeypatch):
    """With chunks of 5 bytes and 2 offsets, merged shards are still the single writer's bytes, and a
    decrease of the offsets across a chunk boundary is still found."""
    monkeypatch.setattr(proposal_store, "COPY_CHUNK_BYTES", 5)
    monkeypatch.setattr(proposal_store, "OFFSETS_CHUNK", 2)
    rng = np.random.default_rng(0)
    counts = [2, 0, 3, 1, 4, 0, 2]
    data = [(rng.uniform(0, 100, (n, 4)).astype(np.float32), rng.random(n).astype(np.float32)) for n in counts]
    whole = write_proposal_file(tmp_path / "whole", iter(data), 7, 9)
    shards = [write_proposal_file(tmp_path / f"s{k}", iter(data[a:b]), b - a, 9, first_image=a)
              for k, (a, b) in enumerate([(0, 3), (3, 4), (4, 7)])]
    assert merge_proposal_files(shards, tmp_path / "merged").read_bytes() == whole.read_bytes()
    proposals = ProposalFile(whole, num_images=7)
    for index, (boxes, scores) in enumerate(data):
        np.testing.assert_array_equal(proposals.read(index)[0], boxes)
    raw = bytearray(whole.read_bytes())
    start = proposals.field_bytes["offsets"][0]
    raw[start + 8 * 4 : start + 8 * 5] = struct.pack("<q", 1)  # offsets[4] = 1 < offsets[3] = 5, a chunk's first
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(UnreadableFileError, match=r"field 'offsets' is not 0 first and non-decreasing \(near image 4\)"):
        ProposalFile(damaged)


def test_the_writer_takes_any_float_dtype_and_one_box_without_its_batch_dimension(tmp_path):
    """float64 boxes / scores are stored as the file's float32; an image of one proposal may come as a [4]
    box and a 0-d score."""
    images = [(np.array([[1.5, 2, 3, 4]]), np.array([0.5])), (np.array([5.0, 6, 7, 8]), np.float64(0.25))]
    proposals = ProposalFile(write_proposal_file(tmp_path / "p", iter(images), 2, 7))
    for index, (boxes, scores) in enumerate(images):
        read_boxes, read_scores = proposals.read(index)
        assert read_boxes.tolist() == np.reshape(boxes, (1, 4)).tolist()
        assert read_scores.tolist() == np.reshape(scores, 1).tolist()


def test_scores_stream_to_a_side_file_beside_the_proposals(tmp_path):
    """While images are written the scores wait in <name>.scores.tmp (appended after the boxes at the end)."""
    side = tmp_path / "p.safetensors.scores.tmp"
    seen = []

    def images():
        yield BOXES[0], SCORES[0]
        seen.append(side.is_file())
        yield BOXES[2], SCORES[2]

    write_proposal_file(tmp_path / "p.safetensors", images(), 2, 7)
    assert seen == [True] and not side.exists()


def test_a_write_that_cannot_start_reports_the_file_not_its_side_file(tmp_path):
    """The temporary file cannot be created (a folder holds its name): the write error names the proposal file;
    the scores' side file, never created, is no second error."""
    (tmp_path / "p.tmp").mkdir()
    with pytest.raises(WriteFailed) as failed:
        three_images(tmp_path / "p")
    assert failed.value.filename == str(tmp_path / "p") and not (tmp_path / "p").exists()


def test_one_shard_merges_to_its_own_bytes(tmp_path):
    shard = three_images(tmp_path / "s0", first_image=0)
    assert merge_proposal_files([shard], tmp_path / "merged").read_bytes() == shard.read_bytes()


def test_a_copy_from_a_shorter_file_stops(tmp_path):
    source = tmp_path / "short"
    source.write_bytes(b"abc")
    fd = os.open(source, os.O_RDONLY)
    try:
        with open(tmp_path / "out", "wb") as out, pytest.raises(OSError, match=r"^unexpected end of file while "
                                                                             r"copying \(2 bytes short\)$"):
            proposal_store._copy_range(fd, 1, 4, out)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"bc"


@pytest.mark.parametrize("images, num_images, message", [
    ([(BOXES[0], SCORES[0])] * 3, 2, r"w: more than the 2 images announced$"),
    ([(BOXES[0], SCORES[0])], 2, r"w: proposals for 1 images, 2 expected$"),
    ([(BOXES[0], SCORES[0]), (BOXES[2], SCORES[0])], 2, r"w: image 4 has 2 boxes but 1 scores$"),
])
def test_a_writer_given_other_images_than_announced_leaves_no_file(tmp_path, images, num_images, message):
    with pytest.raises(ValueError, match=message):
        write_proposal_file(tmp_path / "w", iter(images), num_images, 7, first_image=3)
    assert list(tmp_path.iterdir()) == []


def test_the_header_must_fit_its_fixed_size():
    assert len(proposal_store._header(3, 0, 7, 3)) == 8 + HEADER_BYTES
    spare = HEADER_BYTES - len(proposal_store._header(3, 0, 7, 3).rstrip(b" ")) + 8  # bytes left after "0"
    full = proposal_store._header(3, int("9" * (1 + spare)), 7, 3)  # a first image that fills all 512 bytes
    assert len(full) == 8 + HEADER_BYTES and full.endswith(b"}")
    with pytest.raises(ValueError, match=rf"^proposal file header of {HEADER_BYTES + 1} bytes exceeds"):
        proposal_store._header(3, int("9" * (2 + spare)), 7, 3)
    with pytest.raises(ValueError, match=rf"^proposal file header of 5\d\d bytes exceeds {HEADER_BYTES}$"):
        proposal_store._header(3, 10 ** 300, 7, 3)  # a 301-digit first image


def test_merge_refuses_no_shards_and_shards_of_another_top_n(tmp_path):
    with pytest.raises(ValueError, match=r"merged: no shards to merge$"):
        merge_proposal_files([], tmp_path / "merged")
    first = write_proposal_file(tmp_path / "a", iter([(BOXES[0], SCORES[0])]), 1, 7)
    second = write_proposal_file(tmp_path / "b", iter([(BOXES[0], SCORES[0])]), 1, 8, first_image=1)
    with pytest.raises(UnreadableFileError, match=r"b: post_nms_top_n 8, .*a: 7$"):
        merge_proposal_files([first, second], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("num_images, world, batch, expected", [
    (10, 3, 1, [range(0, 3), range(3, 6), range(6, 10)]),
    (10, 2, 4, [range(0, 4), range(4, 10)]),  # 3 batches of 4 (the last short): 1 and 2
    (3, 4, 1, [range(0, 0), range(0, 1), range(1, 2), range(2, 3)]),
    (9, 2, 3, [range(0, 3), range(3, 9)]),
])
def test_shards_are_whole_consecutive_batches(num_images, world, batch, expected):
    assert [shard_range(num_images, rank, world, batch) for rank in range(world)] == expected


def test_shard_range_takes_one_image_per_batch_by_default():
    assert shard_range(5, 1, 3) == range(1, 3)  # batches of 2 would give range(2, 4)


def _rewrite(path, change):
    """The file with its JSON header changed by ``change(header)`` (same header size)."""
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + HEADER_BYTES])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(data[:8] + text.ljust(HEADER_BYTES) + data[8 + HEADER_BYTES :])


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(header):
        target = header
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return change


_DELETE = object()


@pytest.mark.parametrize("change, reason", [
    (_set("__metadata__", _DELETE), "__metadata__.format is not 'frcnn-proposals-v2'"),
    (_set("__metadata__", "v2"), "__metadata__.format is not 'frcnn-proposals-v2'"),
    (_set("__metadata__", "num_images", _DELETE), "__metadata__ needs integer num_images, first_image, post_nms_top_n"),
    (_set("__metadata__", "first_image", "x"), "__metadata__ needs integer num_images, first_image, post_nms_top_n"),
    (_set("__metadata__", "post_nms_top_n", None), "__metadata__ needs integer num_images, first_image, post_nms_top_n"),
    (_set("scores", _DELETE), "field 'scores' is missing or has no [start, stop] data_offsets"),
    (_set("scores", "data_offsets", [0]), "field 'scores' is missing or has no [start, stop] data_offsets"),
    (_set("scores", "data_offsets", [48.0, 60]), "field 'scores' is missing or has no [start, stop] data_offsets"),
    (_set("boxes", "data_offsets", _DELETE), "field 'boxes' is missing or has no [start, stop] data_offsets"),
    (_set("scores", "dtype", "F16"), "field 'scores': dtype 'F16' shape [3], F32 expected"),
    (_set("offsets", "dtype", "I32"), "field 'offsets': dtype 'I32' shape [4], I64 expected"),
    (_set("scores", "shape", 3), "field 'scores': dtype 'F32' shape 3, F32 expected"),
    (_set("scores", "shape", [-3]), "field 'scores': dtype 'F32' shape [-3], F32 expected"),
    (_set("scores", "shape", [3.0]), "field 'scores': dtype 'F32' shape [3.0], F32 expected"),
    (_set("scores", "data_offsets", [44, 56]), "field 'scores': bytes [44, 56) do not follow the previous field (at 48)"),
    (_set("scores", "data_offsets", [48, 64]), "field 'scores': bytes [48, 64) do not follow the previous field"),
    (_set("boxes", "shape", [4, 3]), "shapes boxes [4, 3], scores [3], offsets [4]: [T, 4], [T], [num_images + 1]"),
    (_set("__metadata__", "num_images", "4"), "offsets [4]: [T, 4], [T], [num_images + 1] = [5] expected"),
])
def test_each_header_check_names_what_is_wrong(tmp_path, change, reason):
    path = three_images(tmp_path / "p", first_image=0)
    _rewrite(path, change)
    with pytest.raises(UnreadableFileError) as refused:
        ProposalFile(path)
    assert str(refused.value).startswith(f"{path}: not a readable proposal file (") and reason in str(refused.value)


def test_fields_may_come_in_any_order_in_the_header(tmp_path):
    """The fields are placed by their byte ranges, not by their order in the JSON."""
    path = three_images(tmp_path / "p", first_image=0)

    def reverse(header):
        items = list(header.items())
        header.clear()
        header.update(reversed(items))
    _rewrite(path, reverse)
    assert ProposalFile(path).read(2)[1].tolist() == [0.75, 0.25]


@pytest.mark.parametrize("cut, reason", [
    (lambda data: data[:5], "ends before the header length (byte 5)"),
    (lambda data: struct.pack("<Q", 10 ** 6) + data[8:], "header length 1000000 does not fit a file of 612 bytes"),
    (lambda data: struct.pack("<Q", 2 << 20) + data[8:] + bytes(3 << 20), "header length 2097152 does not fit"),
    (lambda data: data[:8] + b"\xff" + data[9:], "header is not JSON"),
    (lambda data: b"\xff" * 8 + data[8:], "header length 18446744073709551615 does not fit a file of 612 bytes"),
    (lambda data: struct.pack("<Q", 608) + data[8:], "header length 608 does not fit a file of 612 bytes"),
    (lambda data: data[: 8 + HEADER_BYTES], "520 bytes, the header describes 612 (truncated or extended)"),
    (lambda data: data[:8] + json.dumps({**json.loads(data[8 : 8 + HEADER_BYTES]), "scores": {
        "dtype": "F32", "shape": [3], "data_offsets": [48, 40]}}).encode().ljust(HEADER_BYTES) + data[8 + HEADER_BYTES :],
     "field 'scores': bytes [48, 40) do not follow the previous field (at 48)"),
    (lambda data: data[:8] + b"[]" + b" " * (HEADER_BYTES - 2) + data[8 + HEADER_BYTES :],
     "__metadata__.format is not 'frcnn-proposals-v2'"),
    (lambda data: data + b"\0", "613 bytes, the header describes 612 (truncated or extended)"),
    (lambda data: data[:-8], "604 bytes, the header describes 612 (truncated or extended)"),
])
def test_a_file_cut_or_extended_is_refused(tmp_path, cut, reason):
    path = three_images(tmp_path / "p", first_image=0)
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(UnreadableFileError) as refused:
        ProposalFile(path)
    assert str(refused.value).startswith(f"{path}: not a readable proposal file (") and reason in str(refused.value)


@pytest.mark.parametrize("offsets, reason", [
    ([1, 1, 1, 3], "field 'offsets' is not 0 first and non-decreasing (near image 0)"),
    ([0, 2, 1, 3], "field 'offsets' is not 0 first and non-decreasing (near image 0)"),
    ([0, 1, 1, 2], "field 'offsets' ends at row 2, the file has 3 rows"),
])
def test_offsets_that_do_not_index_the_rows_are_refused(tmp_path, offsets, reason):
    path = three_images(tmp_path / "p", first_image=0)
    data = path.read_bytes()
    path.write_bytes(data[:-32] + np.array(offsets, dtype="<i8").tobytes())
    with pytest.raises(UnreadableFileError) as refused:
        ProposalFile(path)
    assert reason in str(refused.value)


def test_a_missing_file_and_a_file_of_another_range_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing: no such proposal file$"):
        ProposalFile(tmp_path / "nothing")
    path = three_images(tmp_path / "p", first_image=5)
    assert ProposalFile(path).first_image == 5  # a shard opens without a count
    with pytest.raises(UnreadableFileError, match=r"p holds proposals for 3 images \(from image 5\), the dataset has 3$"):
        ProposalFile(path, num_images=3)


def test_a_file_changed_after_it_was_opened_is_named_when_read(tmp_path):
    """Offsets rewritten to point past the rows (image 0 now owns rows 0..39), then the file cut short."""
    path = three_images(tmp_path / "p", first_image=0)
    proposals = ProposalFile(path)
    with open(path, "r+b") as f:
        f.seek(proposals.field_bytes["offsets"][0] + 8)
        f.write(struct.pack("<q", 40))
    with pytest.raises(UnreadableFileError, match=r"p: not a readable proposal file \(ends inside field 'boxes' "
                                                  r"\(rows from 0\)\)$"):
        proposals.read(0)
    with open(path, "r+b") as f:
        f.truncate(proposals.field_bytes["boxes"][0])
    with pytest.raises(UnreadableFileError, match=r"ends before field 'offsets' \(byte 580\)\)$"):
        proposals.read(0)


def test_a_pickled_file_opens_its_own_descriptor(tmp_path):
    proposals = ProposalFile(three_images(tmp_path / "p", first_image=0))
    fd = proposals.fd()
    assert proposals.fd() == fd  # kept while the process is the same
    state = proposals.__getstate__()
    assert state["_fd"] is None and state["_fd_pid"] == -1 and proposals._fd == fd
    copy = pickle.loads(pickle.dumps(proposals))
    assert copy.read(2)[1].tolist() == [0.75, 0.25] and copy.fd() != fd
    proposals._fd_pid = -5  # as seen from another process: opens its own, leaves the other alone
    assert proposals.fd() != fd
    os.fstat(fd)  # still open
    os.close(fd)
    assert PROPOSAL_FORMAT == "frcnn-proposals-v2"


def test_close_closes_the_descriptor(tmp_path):
    proposals = ProposalFile(three_images(tmp_path / "p", first_image=0))
    fd = proposals.fd()
    proposals.close()
    with pytest.raises(OSError):
        os.fstat(fd)
