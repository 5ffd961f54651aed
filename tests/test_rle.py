"""steelseg.rle: Kaggle run-length encoding and the annotation CSV reader.

Convention: pairs ``start length``, 1-indexed, pixels numbered top to bottom, then left to right
(column-major). The hand-written vectors use tiny shapes where the numbering can be checked by eye:
in a (3, 4) image pixel k is at row (k - 1) % 3, column (k - 1) // 3.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import write_train_csv
from steelseg import rle

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def grid(*rows: str) -> np.ndarray:
    """A mask from strings of '.' and '#', one per row."""
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=np.uint8)


# ----------------------------------------------------------------------------- known vectors
KNOWN = [
    # (rle, shape, mask)
    ("1 1", (3, 4), grid("#...", "....", "....")),
    ("12 1", (3, 4), grid("....", "....", "...#")),
    ("3 2", (3, 4), grid(".#..", "....", "#...")),  # pixels 3, 4: crosses the column boundary
    ("2 2 7 3", (3, 4), grid("..#.", "#.#.", "#.#.")),
    ("1 12", (3, 4), grid("####", "####", "####")),
    ("3 4 10 1", (3, 4), grid(".#.#", ".#..", "##..")),
    ("2 3", (2, 3), grid(".#.", "##.")),  # non-square: catches a swapped height/width
    ("1 1 6 1", (2, 3), grid("#..", "..#")),
    ("3 2", (4, 1), np.array([[0], [0], [1], [1]], dtype=np.uint8)),  # one column
    ("2 2", (1, 4), grid(".##.")),  # one row: consecutive pixels are in consecutive columns
]


@pytest.mark.parametrize(("s", "shape", "mask"), KNOWN, ids=[f"{k[0]}@{k[1]}" for k in KNOWN])
def test_decode_known_vectors(s, shape, mask):
    got = rle.decode(s, shape)
    assert got.shape == shape
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize(("s", "shape", "mask"), KNOWN, ids=[f"{k[0]}@{k[1]}" for k in KNOWN])
def test_encode_known_vectors(s, shape, mask):
    assert rle.encode(mask) == s
    assert rle.area(s, shape) == int(mask.sum())


def test_parse_known_vector_is_zero_indexed_half_open():
    runs = rle.parse("2 2 7 3", (3, 4))
    assert runs.dtype == np.int64
    assert runs.tolist() == [[1, 3], [6, 9]]


def test_decode_full_size_run_crossing_a_column():
    mask = rle.decode("250 10")  # default shape 256x1600
    assert mask.shape == (256, 1600)
    assert mask.sum() == 10
    assert mask[249:256, 0].all() and mask[0:3, 1].all()
    assert mask[248, 0] == 0 and mask[3, 1] == 0


def test_decode_last_pixel_of_full_image():
    mask = rle.decode(f"{256 * 1600} 1")
    assert mask[255, 1599] == 1 and mask.sum() == 1


def test_decode_accepts_touching_runs_and_encode_merges_them():
    mask = rle.decode("1 2 3 2", (3, 4))  # runs [1,3) and [3,5) touch: valid, not canonical
    np.testing.assert_array_equal(mask, grid("##..", "#...", "#..."))
    assert rle.encode(mask) == "1 4"


def test_decode_tolerates_surrounding_whitespace():
    np.testing.assert_array_equal(rle.decode("  3 2\n", (3, 4)), rle.decode("3 2", (3, 4)))


@pytest.mark.parametrize(
    "empty",
    ["", "   ", None, float("nan"), np.nan, np.float64("nan")],
    ids=["empty", "blank", "None", "nan", "np.nan", "float64-nan"],
)
def test_empty_inputs_give_empty_mask(empty):
    mask = rle.decode(empty, (3, 4))
    assert mask.shape == (3, 4) and mask.dtype == np.uint8 and not mask.any()
    assert rle.parse(empty, (3, 4)).shape == (0, 2)
    assert rle.area(empty, (3, 4)) == 0
    assert rle.merge([empty, empty], (3, 4)) == ""


def test_encode_empty_mask_is_empty_string():
    assert rle.encode(np.zeros((3, 4), np.uint8)) == ""
    assert rle.merge([], (3, 4)) == ""


def test_encode_accepts_any_nonzero_dtype_and_layout():
    mask = grid(".#.#", ".#..", "##..")
    expected = "3 4 10 1"
    assert rle.encode(mask.astype(bool)) == expected
    assert rle.encode(mask * 255) == expected
    assert rle.encode(mask.astype(np.float32)) == expected
    assert rle.encode(np.asfortranarray(mask)) == expected
    # a non-contiguous view
    big = np.zeros((6, 8), np.uint8)
    big[::2, ::2] = mask
    assert rle.encode(big[::2, ::2]) == expected


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4))], ids=["1-D", "3-D"])
def test_encode_rejects_non_2d(bad):
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(bad)


# ----------------------------------------------------------------------------- out= buffer
def test_decode_into_out_buffer():
    buf = np.full((4, 3), 7, dtype=np.uint8)  # (width, height), dirty
    got = rle.decode("3 4 10 1", (3, 4), out=buf)
    np.testing.assert_array_equal(got, rle.decode("3 4 10 1", (3, 4)))
    assert got.shape == (3, 4)
    assert np.shares_memory(got, buf)
    np.testing.assert_array_equal(buf, got.T)


def test_decode_into_out_buffer_clears_it_for_empty():
    buf = np.ones((4, 3), dtype=np.uint8)
    got = rle.decode("", (3, 4), out=buf)
    assert not got.any() and not buf.any()


@pytest.mark.parametrize(
    "buf",
    [
        np.zeros((3, 4), np.uint8),  # (height, width): not transposed
        np.zeros((4, 3), np.int64),  # wrong dtype
        np.asfortranarray(np.zeros((4, 3), np.uint8)),  # not C-contiguous
        np.zeros((8, 3), np.uint8)[::2],
    ],  # strided view
    ids=["shape", "dtype", "fortran", "strided"],
)
def test_decode_rejects_bad_out_buffer(buf):
    with pytest.raises(ValueError, match="out must be"):
        rle.decode("1 1", (3, 4), out=buf)


# ----------------------------------------------------------------------------- bad strings
BAD = [
    # (rle, match): on a (3, 4) image
    ("1 2 3", r"odd number of tokens \(3\)"),
    ("5", r"odd number of tokens \(1\)"),
    ("1 x", r"token 'x' is not a positive integer"),
    ("1.5 2", r"token '1\.5'"),
    ("1 2.0", r"token '2\.0'"),
    ("1,2", r"token '1,2'"),
    ("0x1 2", r"token '0x1'"),
    ("1e1 2", r"token '1e1'"),
    ("nan 1", r"token 'nan'"),
    ("0 2", r"start 0 < 1"),
    ("-3 2", r"start -3 < 1"),
    ("1 0", r"length 0 < 1"),
    ("1 -2", r"length -2 < 1"),
    ("5 2 1 2", r"not increasing or overlap.*start 5.*followed by start 1"),
    ("1 3 2 2", r"not increasing or overlap"),
    ("1 2 1 2", r"not increasing or overlap"),
    ("12 2", r"past the end of a 3x4 image \(12 pixels\)"),
    ("13 1", r"past the end"),
    ("1 1 5 100", r"past the end"),
]


@pytest.mark.parametrize(("s", "match"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("fn", ["decode", "parse", "area", "merge"])
def test_bad_rle_raises_value_error_naming_the_problem(fn, s, match):
    call = {
        "decode": lambda: rle.decode(s, (3, 4)),
        "parse": lambda: rle.parse(s, (3, 4)),
        "area": lambda: rle.area(s, (3, 4)),
        "merge": lambda: rle.merge(["1 1", s], (3, 4)),
    }[fn]
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_rle_message_starts_with_where():
    with pytest.raises(ValueError, match=r"^train\.csv line 7: RLE has an odd number"):
        rle.decode("1 2 3", (3, 4), where="train.csv line 7")


def test_bad_out_buffer_does_not_hide_bad_rle_and_bad_rle_leaves_no_partial_mask():
    buf = np.zeros((4, 3), np.uint8)
    with pytest.raises(ValueError):
        rle.decode("1 2 5 100", (3, 4), out=buf)
    assert not buf.any()  # validation happens before anything is written


@pytest.mark.parametrize("obj", [5, 1.5, b"1 2", ["1", "2"]], ids=["int", "float", "bytes", "list"])
def test_non_string_rle_raises_value_error(obj):
    with pytest.raises(ValueError, match="must be a string"):
        rle.decode(obj, (3, 4))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_token_beyond_int64_is_a_value_error():
    with pytest.raises(ValueError):
        rle.decode("99999999999999999999999 1", (3, 4))
    with pytest.raises(ValueError):
        rle.decode("1 99999999999999999999999", (3, 4))


INT64_MAX = np.iinfo(np.int64).max


@pytest.mark.parametrize(
    "s", [f"1 {INT64_MAX} -5 8", f"{INT64_MAX} {INT64_MAX}"], ids=["wrap-to-small", "wrap-to-huge"]
)
def test_int64_overflow_is_rejected_by_parse(s):
    with pytest.raises(ValueError):
        rle.parse(s, (3, 4))


def test_int64_overflow_does_not_crash_decode():
    # In a subprocess: the bug is a segmentation fault that would kill the test run.
    code = textwrap.dedent(f"""
        from steelseg import rle
        for s in ["1 {INT64_MAX} -5 8", "{INT64_MAX} {INT64_MAX}"]:
            try:
                rle.decode(s, (3, 4))
            except ValueError:
                continue
            except BaseException as e:
                raise SystemExit(f"{{s!r}}: {{type(e).__name__}}")
            raise SystemExit(f"{{s!r}}: no error")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- properties
shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def masks(draw, shape=None):
    shape = shape or draw(shapes)
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)))


@st.composite
def canonical_rles(draw):
    """(shape, canonical RLE): strictly increasing boundaries 0 <= b0 < b1 < ... <= h*w."""
    h, w = draw(shapes)
    n = h * w
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=n + 1)))
    cuts = cuts[: len(cuts) // 2 * 2]
    tokens = []
    for a, b in zip(cuts[0::2], cuts[1::2]):
        tokens += [a + 1, b - a]
    return (h, w), " ".join(map(str, tokens))


@FAST
@given(masks())
def test_encode_decode_round_trip(mask):
    s = rle.encode(mask)
    got = rle.decode(s, mask.shape)
    np.testing.assert_array_equal(got, mask)
    assert rle.area(s, mask.shape) == int(mask.sum())


@FAST
@given(masks())
def test_encode_is_canonical(mask):
    runs = rle.parse(rle.encode(mask), mask.shape)
    assert (runs[:, 1] > runs[:, 0]).all()  # every run non-empty
    assert (runs[1:, 0] > runs[:-1, 1]).all()  # sorted, separated by a gap (merged)


@FAST
@given(canonical_rles())
def test_decode_encode_round_trip_on_canonical_strings(case):
    shape, s = case
    assert rle.encode(rle.decode(s, shape)) == s
    assert rle.merge([s], shape) == s


@FAST
@given(masks())
def test_decode_into_buffer_matches_decode(mask):
    h, w = mask.shape
    s = rle.encode(mask)
    buf = np.full((w, h), 3, np.uint8)
    np.testing.assert_array_equal(rle.decode(s, (h, w), out=buf), rle.decode(s, (h, w)))


@FAST
@given(st.data())
def test_merge_is_union_of_decoded_masks(data):
    shape = data.draw(shapes)
    ms = data.draw(st.lists(masks(shape), max_size=5))
    rles = [rle.encode(m) for m in ms]
    union = np.zeros(shape, np.uint8)
    for m in ms:
        union |= m
    merged = rle.merge(rles, shape)
    assert merged == rle.encode(union)
    assert rle.merge(list(reversed(rles)) + [None, ""], shape) == merged
    assert rle.area(merged, shape) == int(union.sum())


# ----------------------------------------------------------------------------- fuzz
def _valid_or_value_error(s: object, shape=(3, 4)) -> None:
    try:
        mask = rle.decode(s, shape)
    except ValueError:
        # every other entry point must reject it too
        with pytest.raises(ValueError):
            rle.parse(s, shape)
        with pytest.raises(ValueError):
            rle.merge([s], shape)
        return
    assert mask.shape == shape and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert rle.area(s, shape) == int(mask.sum())
    assert rle.merge([s], shape) == rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), shape), mask)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_random_text(s):
    _valid_or_value_error(s)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789 -+.\t\nx", max_size=24))
def test_fuzz_digit_like_text(s):
    _valid_or_value_error(s)


# Bounded so no start/length approaches int64 overflow (that bug has its own test above).
tokens = st.one_of(
    st.integers(-20, 30),
    st.integers(-(10**15), 10**15),
    st.sampled_from(["", "x", "1.0", "+1", "-0", "01", "1e2", "nan", "٣"]),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(tokens, max_size=10), st.sampled_from([" ", "  ", "\t", "\n", " \n"]))
def test_fuzz_random_token_lists(toks, sep):
    _valid_or_value_error(sep.join(map(str, toks)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 14), max_size=8).filter(lambda t: len(t) % 2 == 0))
def test_fuzz_valid_iff_kaggle_rules(toks):
    """An integer list is accepted exactly when it satisfies every rule of the convention."""
    s = " ".join(map(str, toks))
    starts, lengths = toks[0::2], toks[1::2]
    ok = (
        all(a >= 1 for a in starts)
        and all(n >= 1 for n in lengths)
        and all(starts[i + 1] >= starts[i] + lengths[i] for i in range(len(starts) - 1))
        and all(a + n - 1 <= 12 for a, n in zip(starts, lengths))
    )
    if ok:
        mask = rle.decode(s, (3, 4))
        expected = np.zeros(12, np.uint8)
        for a, n in zip(starts, lengths):
            expected[a - 1 : a - 1 + n] = 1
        np.testing.assert_array_equal(mask, expected.reshape(4, 3).T)
    else:
        with pytest.raises(ValueError):
            rle.decode(s, (3, 4))


# ----------------------------------------------------------------------------- check_image_id
@pytest.mark.parametrize("iid", ["0002cc93b.jpg", "a.png", "a_b-c.jpg", "x"])
def test_check_image_id_accepts_plain_names(iid):
    assert rle.check_image_id(iid) == iid


@pytest.mark.parametrize(
    "iid", ["../a.jpg", "..", ".", "sub/a.jpg", "/etc/passwd", "a\\b.jpg", "..\\a.jpg", "a\x00.jpg"]
)
def test_check_image_id_rejects_paths(iid):
    with pytest.raises(ValueError, match="not a plain file name"):
        rle.check_image_id(iid, "split.csv line 3")
    with pytest.raises(ValueError, match=r"^split\.csv line 3: ImageId"):
        rle.check_image_id(iid, "split.csv line 3")


@pytest.mark.parametrize("iid", ["", "   ", None, 5, float("nan")])
def test_check_image_id_rejects_empty_and_non_strings(iid):
    with pytest.raises(ValueError, match="empty or not a string"):
        rle.check_image_id(iid)


# ----------------------------------------------------------------------------- read_annotations
SHAPE34 = (3, 4)
LABELS = {
    "a.jpg": {1: "1 2", 3: "7 3"},
    "b.jpg": {},  # defect-free: only in the 2019 layout
    "c.jpg": {4: "3 4 10 1"},
    "d_x.jpg": {2: "12 1"},  # an underscore inside the ImageId
}
EXPECTED_ROWS = [
    ("a.jpg", 1, "1 2"),
    ("a.jpg", 3, "7 3"),
    ("c.jpg", 4, "3 4 10 1"),
    ("d_x.jpg", 2, "12 1"),
]


@pytest.mark.parametrize("layout", ["2019", "current"])
def test_read_annotations_layouts(tmp_path, layout):
    path = write_train_csv(tmp_path / "train.csv", LABELS, layout)
    df = rle.read_annotations(path, SHAPE34)
    assert list(df.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert list(df.itertuples(index=False, name=None)) == EXPECTED_ROWS
    assert df["ClassId"].dtype == np.int64
    expected_ids = list(LABELS) if layout == "2019" else ["a.jpg", "c.jpg", "d_x.jpg"]
    assert df.attrs["image_ids"] == expected_ids


def test_read_annotations_both_layouts_give_the_same_frame(tmp_path):
    old = rle.read_annotations(write_train_csv(tmp_path / "old.csv", LABELS, "2019"), SHAPE34)
    new = rle.read_annotations(write_train_csv(tmp_path / "new.csv", LABELS, "current"), SHAPE34)
    pd.testing.assert_frame_equal(old, new)


def test_read_annotations_default_shape_and_whitespace(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        "ImageId,ClassId,EncodedPixels\n"
        "a.jpg, 3 ,  409599 2 \n"  # the last two pixels of a 256x1600 image
        "b.jpg,1,\n"
    )  # an empty row in the current layout: skipped
    df = rle.read_annotations(path)
    assert list(df.itertuples(index=False, name=None)) == [("a.jpg", 3, "409599 2")]


def test_read_annotations_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        rle.read_annotations(tmp_path / "nope.csv")


def test_read_annotations_header_only_current_layout(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ImageId,ClassId,EncodedPixels\n")
    df = rle.read_annotations(path)
    assert len(df) == 0 and df.attrs["image_ids"] == []


def test_read_annotations_header_only_2019_layout(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ImageId_ClassId,EncodedPixels\n")
    try:
        df = rle.read_annotations(path)
    except ValueError:
        return  # a clear error is acceptable too
    assert len(df) == 0 and df.attrs["image_ids"] == []


CUR = "ImageId,ClassId,EncodedPixels\n"
OLD = "ImageId_ClassId,EncodedPixels\n"
BAD_CSV = [
    # (csv text, match): the message names the line and/or ImageId and the problem
    (
        CUR + "a.jpg,1,1 1\nb.jpg,5,1 1\n",
        r"line 3 \(ImageId 'b\.jpg'\): ClassId '5' is not one of 1\.\.4",
    ),
    (CUR + "a.jpg,0,1 1\n", r"line 2 \(ImageId 'a\.jpg'\): ClassId '0'"),
    (CUR + "a.jpg,x,1 1\n", r"ImageId 'a\.jpg'.*ClassId 'x'"),
    (CUR + "a.jpg,1.5,1 1\n", r"ClassId '1\.5'"),
    (CUR + "a.jpg,,1 1\n", r"ImageId 'a\.jpg'.*ClassId ''"),
    (
        CUR + "a.jpg,1,1 1\nb.jpg,1,1 1\na.jpg,1,5 1\n",
        r"line 4: duplicate row for ImageId 'a\.jpg' ClassId 1",
    ),
    (CUR + "../a.jpg,1,1 1\n", r"line 2.*'\.\./a\.jpg' is not a plain file name"),
    (CUR + "sub/a.jpg,1,1 1\n", r"'sub/a\.jpg' is not a plain file name"),
    (CUR + "..,1,1 1\n", r"'\.\.' is not a plain file name"),
    (CUR + ",1,1 1\n", r"line 2.*empty"),
    (CUR + "a.jpg,1,1 1\nb.jpg,2,1 2 3\n", r"ImageId 'b\.jpg'.*ClassId 2.*odd number"),
    (CUR + "b.jpg,2,0 2\n", r"ImageId 'b\.jpg'.*start 0 < 1"),
    (CUR + "b.jpg,2,1 0\n", r"ImageId 'b\.jpg'.*length 0 < 1"),
    (CUR + "b.jpg,2,5 2 1 1\n", r"ImageId 'b\.jpg'.*not increasing or overlap"),
    (CUR + "b.jpg,2,12 2\n", r"ImageId 'b\.jpg'.*past the end"),
    (CUR + "b.jpg,2,1 q\n", r"ImageId 'b\.jpg'.*token 'q'"),
    ("ImageId,EncodedPixels\na.jpg,1 1\n", r"columns \['ImageId', 'EncodedPixels'\].*expected"),
    ("Image,Class,Pixels\na.jpg,1,1 1\n", r"expected the 2019 layout"),
    (
        OLD + "a.jpg_1,1 1\nb.jpg,1 1\n",
        r"line 3: ImageId_ClassId 'b\.jpg' is not '<ImageId>_<ClassId>'",
    ),
    (OLD + "a.jpg_1,1 1\na.jpg_7,\n", r"line 3 \(ImageId 'a\.jpg'\): ClassId '7'"),
    (OLD + "a.jpg_1,1 1\na.jpg_1,\n", r"line 3: duplicate row for ImageId 'a\.jpg' ClassId 1"),
    (OLD + "../x.jpg_1,\n", r"not a plain file name"),
    (OLD + "a.jpg_1,\nb.jpg_3,1 2 3\n", r"ImageId 'b\.jpg'.*ClassId 3.*odd number"),
]


@pytest.mark.parametrize(("text", "match"), BAD_CSV, ids=[f"bad{i}" for i in range(len(BAD_CSV))])
def test_read_annotations_rejects_bad_rows(tmp_path, text, match):
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as exc:
        rle.read_annotations(path, SHAPE34)
    assert "train.csv" in str(exc.value)


def test_read_annotations_line_number_counts_blank_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CUR + "a.jpg,1,1 1\n\nb.jpg,5,1 1\n")
    with pytest.raises(ValueError, match=r"line 4 \(ImageId 'b\.jpg'\)"):
        rle.read_annotations(path, SHAPE34)


# ----------------------------------------------------------------------------- image_mask
@pytest.mark.parametrize("layout", ["2019", "current"])
def test_image_mask_is_union_of_classes(tmp_path, layout):
    df = rle.read_annotations(write_train_csv(tmp_path / "t.csv", LABELS, layout), SHAPE34)
    got = rle.image_mask(df, "a.jpg", SHAPE34)
    expected = rle.decode("1 2", SHAPE34) | rle.decode("7 3", SHAPE34)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        rle.image_mask(df, "c.jpg", SHAPE34), rle.decode("3 4 10 1", SHAPE34)
    )
    assert not rle.image_mask(df, "b.jpg", SHAPE34).any()
    assert rle.image_mask(df, "unknown.jpg", SHAPE34).shape == SHAPE34


def test_image_mask_overlapping_classes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(CUR + "a.jpg,1,1 5\na.jpg,2,4 4\n")
    df = rle.read_annotations(path, SHAPE34)
    assert rle.encode(rle.image_mask(df, "a.jpg", SHAPE34)) == "1 7"


def test_image_mask_default_shape(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(CUR + "a.jpg,3,250 10\n")
    m = rle.image_mask(rle.read_annotations(path), "a.jpg")
    assert m.shape == (256, 1600) and m.sum() == 10 and m[0, 1] == 1


def test_decoding_from_threads_leaves_the_warning_filters_alone():
    """The uint8 cache decodes masks on a thread pool. A warnings.catch_warnings() there swapped
    the process-wide filters; racing threads left "error::DeprecationWarning" behind, and
    torch.compile's import then failed on a GPU machine."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    good = " ".join(str(i) for i in range(1, 2000, 2))
    texts = [good, "1 2 x", "3 4-5", good]
    with ThreadPoolExecutor(8) as pool:
        parsed = list(pool.map(lambda i: rle._integers(texts[i % 4]), range(4000)))
    assert warnings.filters == before
    assert parsed[1] is None and parsed[2] is None and len(parsed[0]) == 1000
