"""steelseg-import: each labelling tool's export, made here, to the folder layout's masks;
the overlap rule; every bad input is one line and writes nothing; class names travel."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import exit_code
from steelseg import coco, layouts
from steelseg.labelimport import import_labels, parse_classes

import_main = importlib.import_module("steelseg.cli.import_").main
H, W = 40, 60  # every test image


def write_image(path: Path, shape: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, 90, np.uint8))
    return path


def saved_masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (out / "masks").iterdir()}


def run_import(*argv: object) -> int:
    return exit_code(import_main, list(argv))


# ----------------------------------------------------------------------------- exports
def cvat_rle(bitmap: np.ndarray) -> str:
    """CVAT's mask RLE: runs in row order, the first a run of 0."""
    flat = bitmap.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    return ", ".join(map(str, ([0] if flat[0] else []) + runs.tolist()))


def holed(height: int, width: int) -> np.ndarray:
    """A block with a hole in the middle."""
    block = np.ones((height, width), np.uint8)
    block[3:7, 4:8] = 0
    return block


def make_cvat(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A CVAT for images 1.1 export: polygon, box, turned box, mask with a hole, a polyline
    (no area); and the masks it must give."""
    write_image(src / "a.png")
    write_image(src / "b.png")
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><task><labels>
  <label><name>scratch</name><color>#ff0000</color><attributes/></label>
  <label><name>pit</name><color>#00ff00</color><attributes/></label>
  <label><name>patch</name><color>#0000ff</color><attributes/></label>
</labels></task></meta>
<image id="0" name="a.png" width="{W}" height="{H}">
  <polygon label="scratch" source="manual" occluded="0" points="2.00,2.00;20.00,2.00;20.00,12.00;2.00,12.00" z_order="0"/>
  <box label="pit" source="manual" occluded="0" xtl="30" ytl="5" xbr="40" ybr="15" z_order="0"/>
  <box label="pit" source="manual" occluded="0" xtl="45" ytl="20" xbr="55" ybr="24" rotation="90.0" z_order="0"/>
  <mask label="patch" source="manual" occluded="0" rle="{cvat_rle(holed(10, 12))}" left="5" top="20" width="12" height="10" z_order="0"/>
  <polyline label="scratch" source="manual" occluded="0" points="0,0;5,5" z_order="0"/>
</image>
<image id="1" name="b.png" width="{W}" height="{H}"></image>
</annotations>
"""  # noqa: E501
    (src / "annotations.xml").write_text(xml)
    a = np.zeros((H, W), np.uint8)
    a[2:12, 2:20] = 1
    a[5:15, 30:40] = 2
    a[17:27, 48:52] = 2  # the 10x4 box turned a quarter about its centre (50, 22)
    a[20:30, 5:17] = 3 * holed(10, 12)
    return src / "annotations.xml", {"a": a, "b": np.zeros((H, W), np.uint8)}


def make_labelme(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """LabelMe files: a small rectangle inside a large polygon (listed first), a circle,
    a line (no area)."""
    write_image(src / "a.png")
    write_image(src / "b.png")
    shapes = [
        {"label": "pit", "points": [[15, 14], [10, 10]], "shape_type": "rectangle"},
        {"label": "patch", "points": [[2, 2], [40, 2], [40, 30], [2, 30]], "shape_type": "polygon"},
        {"label": "scratch", "points": [[50, 10], [50, 14]], "shape_type": "circle"},
        {"label": "scratch", "points": [[0, 39], [20, 39]], "shape_type": "line"},
    ]
    for name, shown in (("a", shapes), ("b", [])):
        doc = {"version": "5.4.1", "flags": {}, "shapes": shown, "imagePath": f"{name}.png",
               "imageData": None, "imageHeight": H, "imageWidth": W}  # fmt: skip
        (src / f"{name}.json").write_text(json.dumps(doc))
    a = np.zeros((H, W), np.uint8)
    a[2:30, 2:40] = 2
    a[10:14, 10:15] = 1  # the smaller instance over the larger one
    return src, {"a": a, "b": np.zeros((H, W), np.uint8)}


def ls_brush(bitmap: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a bool (H, W) stroke (as the tool stores it: RGBA)."""
    from label_studio_converter.brush import encode_rle

    rgba = np.zeros((*bitmap.shape, 4), np.uint8)
    rgba[bitmap > 0] = 255
    return encode_rle(rgba.ravel())


def make_label_studio(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A Label Studio JSON export: polygon, rectangle and brush (with a hole) in per cent,
    after a cancelled annotation; the upload's renamed file; a task nobody labelled yet (no
    image file: it is left out, not imported as clean)."""
    pytest.importorskip("label_studio_converter")
    write_image(src / "a.png")
    stroke = np.zeros((H, W), np.uint8)
    stroke[28:38, 40:52] = holed(10, 12)
    size = {"original_width": W, "original_height": H, "image_rotation": 0}
    results = [
        {"id": "p1", "type": "polygonlabels", "from_name": "label", "to_name": "image", **size,
         "value": {"points": [[10, 25], [50, 25], [50, 75], [10, 75]], "polygonlabels": ["pit"]}},
        {"id": "r1", "type": "rectanglelabels", "from_name": "label", "to_name": "image", **size,
         "value": {"x": 60, "y": 10, "width": 20, "height": 25, "rotation": 0,
                   "rectanglelabels": ["scratch"]}},
        {"id": "b1", "type": "brushlabels", "from_name": "tag", "to_name": "image", **size,
         "value": {"format": "rle", "rle": ls_brush(stroke), "brushlabels": ["patch"]}},
        {"id": "c1", "type": "choices", "from_name": "quality", "to_name": "image",
         "value": {"choices": ["good"]}},
    ]  # fmt: skip
    cancelled = {"id": 1, "was_cancelled": True, "result": [dict(results[0], value={
        "points": [[0, 0], [90, 0], [90, 90]], "polygonlabels": ["scratch"]})]}  # fmt: skip
    tasks = [{"id": 7, "data": {"image": "/data/upload/1/0a1b2c3d-a.png"},
              "annotations": [cancelled, {"id": 2, "was_cancelled": False, "result": results}]},
             {"id": 8, "data": {"image": "/data/upload/1/9f8e7d6c-b.png"}, "annotations": []}]  # fmt: skip
    (src / "project.json").write_text(json.dumps(tasks))
    a = np.zeros((H, W), np.uint8)
    a[10:30, 6:30] = 1
    a[4:14, 36:48] = 2
    a[28:38, 40:52] = 3 * holed(10, 12)
    return src / "project.json", {"a": a}


def make_ls_coco(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Label Studio's COCO export: categories from 0, file names under images/, a rectangle
    as a box with an empty segmentation."""
    write_image(src / "images" / "a.png")
    doc = {
        "images": [{"width": W, "height": H, "id": 0, "file_name": "images/a.png"}],
        "categories": [{"id": 0, "name": "pit"}, {"id": 1, "name": "scratch"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 0, "iscrowd": 0, "bbox": [4, 4, 10, 10],
             "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]], "area": 100},
            {"id": 1, "image_id": 0, "category_id": 1, "iscrowd": 0, "bbox": [40, 20, 10, 5],
             "segmentation": [], "area": 50},
        ],
    }  # fmt: skip
    (src / "result.json").write_text(json.dumps(doc))
    a = np.zeros((H, W), np.uint8)
    a[4:14, 4:14] = 1
    a[20:25, 40:50] = 2
    return src / "result.json", {"a": a}


def make_coco(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A COCO file written by steelseg.coco from class-id masks (RLE, holes, 3 classes)."""
    a = np.zeros((H, W), np.uint8)
    cv2.circle(a, (20, 20), 12, 1, -1)
    cv2.circle(a, (20, 20), 5, 0, -1)
    a[30:34, 40:50] = 2
    a[5:9, 40:45] = 3
    b = np.zeros((H, W), np.uint8)
    b[2:20, 3:30] = 2
    for name in ("a", "b"):
        write_image(src / f"{name}.png")
    doc = coco.masks_to_coco([("a.png", a), ("b.png", b)], {1: "scratch", 2: "pit", 3: "patch"})
    coco.write_coco(src / "labels.json", doc)
    return src / "labels.json", {"a": a, "b": b}


def make_masks(src: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Colour masks: red scratch, green pit on black."""
    write_image(src / "images" / "a.jpg")
    colour = np.zeros((H, W, 3), np.uint8)  # BGR for OpenCV
    colour[2:10, 2:30] = (0, 0, 255)
    colour[20:30, 40:50] = (0, 255, 0)
    (src / "masks").mkdir()
    cv2.imwrite(str(src / "masks" / "a.png"), colour)
    a = np.zeros((H, W), np.uint8)
    a[2:10, 2:30] = 1
    a[20:30, 40:50] = 2
    return src, {"a": a}


MASK_CLASSES = "scratch=#ff0000,pit=#00ff00"
EXPORTS: dict[str, tuple[str, Callable, tuple[str, ...]]] = {
    "coco": ("coco", make_coco, ("scratch", "pit", "patch")),
    "ls-coco": ("coco", make_ls_coco, ("pit", "scratch")),
    "cvat": ("cvat", make_cvat, ("scratch", "pit", "patch")),
    "labelme": ("labelme", make_labelme, ("pit", "patch", "scratch")),
    "labelstudio": ("labelstudio", make_label_studio, ("pit", "scratch", "patch")),
    "masks": ("masks", make_masks, ("scratch", "pit")),
}


@pytest.mark.parametrize("export", list(EXPORTS))
def test_each_export_imports_to_the_expected_masks(export: str, tmp_path: Path, capsys) -> None:
    fmt, make, names = EXPORTS[export]
    src, expected = make(tmp_path / "src")
    out = tmp_path / "out"
    extra = ["--classes", MASK_CLASSES] if fmt == "masks" else []
    assert run_import(src, "--format", fmt, "--out", out, *extra) == 0, capsys.readouterr().err
    masks = saved_masks(out)
    if export == "labelme":  # a circle of radius 4 about (50, 10), traced by a polygon
        circle = masks["a"] == 3
        ys, xs = np.nonzero(circle)
        assert 40 <= circle.sum() <= 60 and abs(xs.mean() - 50) < 1 and abs(ys.mean() - 10) < 1
        masks["a"][circle] = 0
    assert sorted(masks) == sorted(expected)
    for stem, mask in expected.items():
        np.testing.assert_array_equal(masks[stem], mask, err_msg=f"{export}: {stem}")
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(expected)
    table = layouts.read_classes(out)
    assert [table[c][0] for c in sorted(table)] == list(names)
    assert all(colour.startswith("#") and len(colour) == 7 for _, colour in table.values())
    if export == "cvat":  # the task's own colours
        assert table[1][1] == "#ff0000"
    printed = capsys.readouterr().out
    assert printed.startswith(f"steelseg-import: wrote {out}: {len(expected)} images")
    assert ("1 unlabelled tasks left out" in printed) == (export == "labelstudio")
    assert ("(1 lines or points without area skipped)" in printed) == (
        export in ("cvat", "labelme")
    )
    # the folder layout reads it, with its class names
    labels = layouts.folder_labels(out, n_classes=len(names))
    assert len(labels) == len(expected)
    assert layouts.class_names(out, len(names)) == dict(enumerate(names, start=1))


def test_masks_to_coco_to_masks_through_the_command(tmp_path: Path) -> None:
    """The acceptance's round trip: the folder layout's masks -> COCO -> steelseg-import ->
    the same masks, class for class."""
    src, expected = make_coco(tmp_path / "src")
    assert run_import(src, "--format", "coco", "--out", tmp_path / "out") == 0
    back = saved_masks(tmp_path / "out")
    for stem, mask in expected.items():
        np.testing.assert_array_equal(back[stem], mask)
    # and once more through the imported folder itself
    items = [(f"{s}.png", back[s]) for s in sorted(back)]
    names = layouts.class_names(tmp_path / "out", 3)
    coco.write_coco(tmp_path / "again" / "labels.json", coco.masks_to_coco(items, names))
    for stem in back:
        write_image(tmp_path / "again" / f"{stem}.png")
    assert run_import(tmp_path / "again" / "labels.json", "--format", "coco", "--out", tmp_path / "out2") == 0  # fmt: skip
    for stem, mask in saved_masks(tmp_path / "out2").items():
        np.testing.assert_array_equal(mask, expected[stem])


def test_classes_fix_the_ids_and_binary_masks_read_as_white(tmp_path: Path) -> None:
    src, expected = make_labelme(tmp_path / "src")
    out = tmp_path / "out"
    assert run_import(src, "--format", "labelme", "--out", out,
                      "--classes", "patch,pit=#123456,scratch,extra") == 0  # fmt: skip
    a = saved_masks(out)["a"]
    assert (a[expected["a"] == 2] == 1).all() and (a[expected["a"] == 1] == 2).all()
    assert layouts.read_classes(out)[2] == ("pit", "#123456")
    assert layouts.read_classes(out)[4][0] == "extra"  # a class no shape uses keeps its id
    # 0/255 masks: white is the one class
    grey = tmp_path / "grey"
    write_image(grey / "images" / "a.png")
    mask = np.zeros((H, W), np.uint8)
    mask[5:9, 5:9] = 255
    (grey / "masks").mkdir()
    cv2.imwrite(str(grey / "masks" / "a.png"), mask)
    assert run_import(grey, "--format", "masks", "--out", tmp_path / "g", "--classes", "defect=#ffffff") == 0  # fmt: skip
    np.testing.assert_array_equal(saved_masks(tmp_path / "g")["a"], mask // 255)


def test_overwrite_replaces_and_otherwise_an_existing_folder_is_refused(tmp_path, capsys):
    src, _ = make_coco(tmp_path / "src")
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    assert run_import(src, "--format", "coco", "--out", out) == 2
    assert "exists and is not empty; choose another --out or pass --overwrite" in capsys.readouterr().err  # fmt: skip
    assert run_import(src, "--format", "coco", "--out", out, "--overwrite") == 0
    assert not (out / "old").exists() and (out / "classes.csv").is_file()


def test_the_installed_script_runs(tmp_path: Path) -> None:
    src, _ = make_coco(tmp_path / "src")
    script = Path(sys.executable).parent / "steelseg-import"
    done = subprocess.run(
        [str(script), str(src), "--format", "coco", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 images, 4 annotations; classes 1 scratch (360 px), 2 pit (" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classes.csv",
        "images",
        "masks",
    ]


def test_parse_classes() -> None:
    assert parse_classes("a=#FF0000, b") == {"a": "#ff0000", "b": ""}
    with pytest.raises(ValueError, match="'red' of a is not a colour #rrggbb"):
        parse_classes("a=red")
    with pytest.raises(ValueError, match="'a' is twice"):
        parse_classes("a,a")


# ----------------------------------------------------------------------------- bad input
def edit_json(path: Path, change: Callable[[object], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def resize(path: Path) -> None:
    write_image(path, (H + 2, W))


COCO_ANN = lambda d: d["annotations"][0]  # noqa: E731
BAD: dict[str, tuple[str, Callable[[Path, Path], None], tuple[str, ...]]] = {
    # format, how the good export is spoilt (its annotation file, its folder), what the line says
    "coco-malformed": ("coco", lambda f, s: f.write_text('{"images": [,]}'),
                       ("labels.json is not valid JSON (line 1, column 13", "fix the file")),
    "coco-outside": ("coco", lambda f, s: edit_json(f, lambda d: COCO_ANN(d).update(
        segmentation=[[1, 1, 70, 1, 70, 9]])),
        ("labels.json: annotation 1 (image a.png) has the point (70, 1) outside its 60x40 image",)),
    "coco-unknown-label": ("coco", lambda f, s: edit_json(f, lambda d: COCO_ANN(d).update(
        category_id=8)), ("annotation 1 (image a.png) has the unknown category_id 8", "add it")),
    "coco-missing-image": ("coco", lambda f, s: (s / "b.png").unlink(),
                           ("image 2 (b.png): the image 'b.png' is not in", "pass --images")),
    "coco-duplicate-id": ("coco", lambda f, s: edit_json(f, lambda d: d["images"][1].update(id=1)),
                          ("image id 1 is used twice (a.png and b.png)", "its own id")),
    "coco-size": ("coco", lambda f, s: resize(s / "b.png"),
                  ("image 2 (b.png): the image", "is 60x42 but it was labelled at 60x40")),
    "cvat-malformed": ("cvat", lambda f, s: edit_text(f, "</annotations>", "</annotation>"),
                       ("annotations.xml is not valid XML (line", "export it again")),
    "coco-given-xml": ("coco", lambda f, s: f.write_text("<annotations></annotations>"),
                       ("labels.json is XML, not JSON: a CVAT for images export is --format cvat",)),
    "cvat-given-json": ("cvat", lambda f, s: f.write_text('{"images": []}'),
                        ("annotations.xml is JSON, not XML: --format coco, labelme",)),
    "cvat-outside": ("cvat", lambda f, s: edit_text(f, "20.00,12.00", "20.00,52.00"),
                     ("<image id=0 name=a.png> <polygon> 1 (label 'scratch') has the point "
                      "(20, 52) outside its 60x40 image",)),
    "cvat-mask-outside": ("cvat", lambda f, s: edit_text(f, 'left="5"', 'left="55"'),
                          ("<mask> 4 (label 'patch'): its box 12x10 at (55, 20) is outside",)),
    "cvat-unknown-label": ("cvat", lambda f, s: edit_text(f, 'box label="pit"', 'box label="dent"'),
                           ("<box> 2 (label 'dent') has the label 'dent', which the file's labels "
                            "lack (scratch, pit, patch)",)),
    "cvat-missing-image": ("cvat", lambda f, s: (s / "a.png").unlink(),
                           ("<image id=0 name=a.png>: the image 'a.png' is not in",)),
    "cvat-duplicate-id": ("cvat", lambda f, s: edit_text(f, '<image id="1"', '<image id="0"'),
                          ("image id 0 is used twice (a.png and b.png)",)),
    "cvat-size": ("cvat", lambda f, s: resize(s / "a.png"),
                  ("<image id=0 name=a.png>: the image", "is 60x42 but it was labelled at 60x40")),
    "labelme-malformed": ("labelme", lambda f, s: (s / "b.json").write_text("{"),
                          ("b.json is not valid JSON (line 1, column 2",)),
    "labelme-outside": ("labelme", lambda f, s: edit_json(s / "a.json", lambda d: d["shapes"][1]
                        .update(points=[[2, 2], [-9, 2], [40, 30]])),
                        ("a.json: shape 2 (polygon, label 'patch') has the point (-9, 2) outside",)),
    "labelme-unknown-label": ("labelme", None,  # with --classes lacking one
                              ("a.json: shape 1 (rectangle, label 'pit') has the label 'pit', "
                               "which --classes lacks (patch, scratch); add it to --classes",)),
    "labelme-missing-image": ("labelme", lambda f, s: (s / "b.png").unlink(),
                              ("b.json: the image 'b.png' is not in",)),
    "labelme-duplicate-image": ("labelme", lambda f, s: edit_json(s / "b.json", lambda d: d.update(
        imagePath="a.png")), ("a.json and", "b.json both label the image", "a.png (one mask a.png); keep one")),
    "labelme-size": ("labelme", lambda f, s: edit_json(s / "a.json", lambda d: d.update(
        imageWidth=80)), ("a.json: the image", "is 60x40 but it was labelled at 80x40")),
    "labelstudio-malformed": ("labelstudio", lambda f, s: f.write_text("[{]"),
                              ("project.json is not valid JSON",)),
    "labelstudio-outside": ("labelstudio", lambda f, s: edit_json(f, lambda d: d[0]["annotations"][1]
                            ["result"][0]["value"].update(points=[[10, 25], [150, 25], [50, 75]])),
                            ("task 7 result p1 (polygonlabels) has the point (90, 10) outside its "
                             "60x40 image",)),
    "labelstudio-missing-image": ("labelstudio", lambda f, s: (s / "a.png").unlink(),
                                  ("task 7: the image '/data/upload/1/0a1b2c3d-a.png' is not in",)),
    "labelstudio-duplicate-id": ("labelstudio", lambda f, s: edit_json(f, lambda d: d.append(d[0])),
                                 ("task 7 is in the file twice",)),
    "labelstudio-size": ("labelstudio", lambda f, s: resize(s / "a.png"),
                         ("task 7: the image", "is 60x42 but it was labelled at 60x40")),
    "masks-unknown-colour": ("masks", lambda f, s: cv2.imwrite(
        str(s / "masks" / "a.png"), np.full((H, W, 3), (255, 0, 0), np.uint8)),
        ("mask", "a.png holds the colour(s) #0000ff (2400 pixels) that --classes does not name",)),
    "masks-missing-image": ("masks", lambda f, s: (s / "images" / "a.jpg").unlink(),
                            ("mask", "a.png has no image a.* in", "add the image")),
    "masks-size": ("masks", lambda f, s: resize(s / "images" / "a.jpg"),
                   ("a.png is 60x40 but its image", "a.jpg is 60x42")),
}  # fmt: skip
MAKERS = {"coco": make_coco, "cvat": make_cvat, "labelme": make_labelme,
          "labelstudio": make_label_studio, "masks": make_masks}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_nothing_is_written(case: str, tmp_path: Path, capsys) -> None:
    fmt, spoil, says = BAD[case]
    src, _ = MAKERS[fmt](tmp_path / "src")
    folder = src if src.is_dir() else src.parent
    classes = MASK_CLASSES if fmt == "masks" else None
    if spoil is None:
        classes = "patch,scratch"
    else:
        spoil(src, folder)
    out = tmp_path / "out"
    argv = [src, "--format", fmt, "--out", out] + (["--classes", classes] if classes else [])
    assert run_import(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("steelseg-import: error: ") and err.count("\n") == 1, err
    for text in says:
        assert text in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left either


# ----------------------------------------------------------------------------- class names
def test_class_names_come_from_the_table_else_the_ids(tmp_path: Path, synth_root: Path) -> None:
    assert layouts.class_names(synth_root, 4) == {1: "1", 2: "2", 3: "3", 4: "4"}  # Kaggle
    assert layouts.class_names(None, 1) == {1: "defect"}
    layouts.write_classes(tmp_path, {1: ("scratch, long", "#ff0000"), 3: ("pit", "")})
    assert layouts.read_classes(tmp_path) == {1: ("scratch, long", "#ff0000"), 3: ("pit", "")}
    assert layouts.class_names(tmp_path, 3) == {1: "scratch, long", 2: "2", 3: "pit"}
    (tmp_path / "classes.csv").write_text("id,name,colour\n1,a,\n1,b,\n")
    with pytest.raises(ValueError, match=r"classes.csv line 3: class 1 'b' is listed twice"):
        layouts.read_classes(tmp_path)


def test_prepare_records_the_class_names(tmp_path: Path) -> None:
    from steelseg.prepare import prepare

    src, _ = make_coco(tmp_path / "src")
    for k in range(8):  # enough images for a split
        write_image(tmp_path / "src" / f"c{k}.png")
    doc = json.loads(src.read_text())
    doc["images"] += [{"id": 10 + k, "file_name": f"c{k}.png", "height": H, "width": W}
                      for k in range(8)]  # fmt: skip
    src.write_text(json.dumps(doc))
    import_labels(src, "coco", tmp_path / "plant")
    split = prepare(tmp_path / "plant", tmp_path / "prepared", None, n_classes=3)
    meta = json.loads((split.parent / "prepare.json").read_text())
    assert meta["class_names"] == {"1": "scratch", "2": "pit", "3": "patch"}


@pytest.fixture
def named_plant(tmp_path: Path) -> Path:
    """An imported folder of 4 named classes, every class present."""
    names = {1: "scratch", 2: "pit", 3: "patch", 4: "dent"}
    items = []
    for k in range(3):
        mask = np.zeros((64, 320), np.uint8)
        for c in names:
            mask[8 + 12 * k : 16 + 12 * k, 60 * c : 60 * c + 30 + k] = c
        items.append((f"s{k}.png", mask))
        write_image(tmp_path / "src" / f"s{k}.png", mask.shape)
    coco.write_coco(tmp_path / "src" / "labels.json", coco.masks_to_coco(items, names))
    import_labels(tmp_path / "src" / "labels.json", "coco", tmp_path / "plant")
    return tmp_path / "plant"


def test_eval_json_and_the_report_name_the_classes(
    tiny_ckpt_4gate: Path, named_plant: Path, tmp_path: Path
) -> None:
    from helpers import eval_ckpt

    out = tmp_path / "eval"
    ev = eval_ckpt(tiny_ckpt_4gate, "all", named_plant, out=out, progress=False, max_panels=0)
    assert ev["class_names"] == {"1": "scratch", "2": "pit", "3": "patch", "4": "dent"}
    assert json.loads((out / "eval.json").read_text())["class_names"] == ev["class_names"]
    html = (out / "report.html").read_text()
    for label in ("scratch (1)", "pit (2)", "patch (3)", "dent (4)"):
        assert label in html
    assert "class 1" not in html


def test_predict_names_the_classes_of_the_data_its_run_was_trained_on(
    tiny_ckpt_4gate: Path, named_plant: Path, tmp_path: Path
) -> None:
    import pandas as pd
    from omegaconf import OmegaConf

    from steelseg.cli.predict import main as predict_main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(tiny_ckpt_4gate.read_bytes())
    cfg = OmegaConf.load(tiny_ckpt_4gate.parent.parent / "config.yaml")
    cfg.data.root = str(named_plant)  # as if trained on the imported folder
    OmegaConf.save(cfg, run / "config.yaml")
    out = tmp_path / "pred"
    argv = [run / "checkpoints" / "last.ckpt", named_plant / "images", "--out", out,
            "--runtime", "torch", "--masks-only", "--no-tuned"]  # fmt: skip
    assert exit_code(predict_main, argv) == 0
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    names = {"1": "scratch", "2": "pit", "3": "patch", "4": "dent", "0": ""}
    assert len(rows) and (rows["ClassName"] == rows["ClassId"].map(names)).all()
    doc = json.loads((out / "predictions.coco.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["scratch", "pit", "patch", "dent"]
