"""The package's shape: imports follow the data path, commands are thin and quick to answer."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import steelseg
from helpers import ENTRY_POINTS

SRC = Path(steelseg.__file__).parent
REPO = SRC.parents[1]
LIBRARY = [m for m in steelseg.MODULES if m != "cli"]
COMMANDS = ENTRY_POINTS  # console script -> "module:main"
#: what a command's --help must not load (seconds of start-up on a small machine)
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "segmentation_models_pytorch", "cv2")


def steelseg_imports(path: Path) -> set[str]:
    """The steelseg modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "steelseg":
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # from steelseg import a, b
                    found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "steelseg" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_is_listed_in_data_path_order() -> None:
    files = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"} | {"cli"}
    assert files == set(steelseg.MODULES)


@pytest.mark.parametrize("module", LIBRARY)
def test_imports_follow_the_data_path(module: str) -> None:
    """No library module imports one further along the path (see steelseg/__init__.py)."""
    here = steelseg.MODULES.index(module)
    later = {m for m in steelseg_imports(SRC / f"{module}.py") if m != module}
    assert not {m for m in later if steelseg.MODULES.index(m) > here}, (
        f"{module} imports modules that come after it: "
        f"{sorted(m for m in later if steelseg.MODULES.index(m) > here)}"
    )


def test_library_modules_hold_no_command_line_code() -> None:
    offenders = [m for m in LIBRARY if "argparse" in (SRC / f"{m}.py").read_text()]
    assert offenders == []


def test_every_command_lives_in_cli() -> None:
    assert sorted(COMMANDS) == sorted(
        f"steelseg-{p.stem.rstrip('_')}"  # cli/import_.py: import is a keyword
        for p in (SRC / "cli").glob("*.py")
        if p.stem not in ("__init__", "common")
    )
    assert all(v.startswith("steelseg.cli.") and v.endswith(":main") for v in COMMANDS.values())


def test_import_steelseg_gives_every_module_lazily() -> None:
    code = (
        "import sys, steelseg; assert dir(steelseg) == sorted(steelseg.MODULES), dir(steelseg);"
        "assert 'torch' not in sys.modules, 'import steelseg loaded torch';"
        "print(steelseg.postprocess.PostProcess.__name__, steelseg.rle.SHAPE);"
        "assert 'torch' not in sys.modules, 'postprocess or rle loaded torch'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["PostProcess", "(256,", "1600)"]


def test_numpy_metrics_load_no_torch() -> None:
    """Scoring masks (evaluation, tuning, reports) needs numpy, not torch or smp."""
    code = (
        "import sys, numpy as np, steelseg.metric as m;"
        "print(m.pixel_scores(np.array([1, 0]), np.array([0, 0]), np.array([1, 0]))['iou']);"
        f"print(','.join(h for h in {HEAVY!r} + ('torchmetrics',) if h in sys.modules) or 'none')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0.5", "none"]


def test_help_loads_nothing_heavy() -> None:
    """Every ``--help`` answers before torch, Lightning or OpenCV is imported (timed in the
    closing notes, not here). One interpreter asks each command in turn and says, after each,
    what heavy package has appeared."""
    code = "\n".join(
        [
            "import sys, importlib, contextlib, io",
            f"heavy = {HEAVY!r}",
            f"for command, target in {sorted(COMMANDS.items())!r}:",
            "    sys.argv = [command, '--help']",
            "    main = getattr(importlib.import_module(target.split(':')[0]), 'main')",
            "    out = io.StringIO()",
            "    with contextlib.redirect_stdout(out):",
            "        try:",
            "            main()",
            "        except SystemExit:",
            "            pass",
            "    loaded = [h for h in heavy if h in sys.modules]",
            "    print(command, 'usage' in out.getvalue().lower(), ','.join(loaded) or 'none')",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.strip().splitlines()}
    assert rows == {command: ["True", "none"] for command in COMMANDS}


def test_command_choices_match_the_library() -> None:
    """The commands name their choices without importing the library; they must agree."""
    from steelseg import duplicates, export, labelimport, postprocess, prepare, runtime, writer
    from steelseg.cli import common
    from steelseg.cli import data as data_cli
    from steelseg.cli import export as export_cli
    from steelseg.cli import import_ as import_cli
    from steelseg.cli import predict as predict_cli

    assert common.TTA_FLIPS == postprocess.TTA_CHOICES
    assert common.SPLITS == prepare.SPLIT_CHOICES
    assert export_cli.FORMATS == export.FORMATS
    assert export_cli.ONNX_EXPORTERS == export.ONNX_EXPORTERS
    assert tuple(export.INPUT_DTYPES) == export_cli.INPUT_DTYPES
    assert export_cli.PRECISIONS == export.EXPORT_PRECISIONS
    assert common.RUNTIMES == runtime.RUNTIMES and common.PRECISIONS == runtime.PRECISIONS
    assert export.DEFAULT_CALIBRATION == 64 and runtime.DICE_TOLERANCE == 0.005  # the help texts
    fields = tuple(f.name for f in __import__("dataclasses").fields(postprocess.PostProcess))
    assert fields == common.POSTPROCESS_FIELDS
    assert common.GATES == postprocess.GATES
    assert predict_cli.OUTPUTS == writer.OUTPUTS
    assert import_cli.FORMATS == labelimport.FORMATS
    assert data_cli.HASH_THRESHOLD == duplicates.HASH_THRESHOLD
    from steelseg import synth
    from steelseg.cli import synth as synth_cli

    assert synth_cli.N_IMAGES == synth.N_IMAGES
    from steelseg import tune
    from steelseg.cli import tune as tune_cli

    helps = {a.dest: a.help for a in tune_cli.build_parser()._actions}
    for dest, grid in (
        ("min_component_areas", tune.MIN_COMPONENT_AREAS),
        ("min_total_areas", tune.MIN_TOTAL_AREAS),
    ):
        assert f"(default {','.join(map(str, grid))})" in helps[dest]


def test_serve_offers_no_option_it_ignores() -> None:
    """steelseg-serve forms its own batches (--max-batch, --max-wait-ms) and shows no progress
    bar: --batch-size and --no-progress would be accepted and do nothing."""
    from steelseg.cli import serve as serve_cli

    options = {o for a in serve_cli.build_parser()._actions for o in a.option_strings}
    assert {"--max-batch", "--runtime", "--threshold"} <= options
    assert not options & {"--batch-size", "--no-progress"}


def test_train_help_says_what_it_does_first() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv=['steelseg-train','--help'];"
            "from steelseg.cli.train import main; main()",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.startswith("steelseg-train: fit, validate and test"), done.stdout[:300]
    groups = dict(
        line.split(": ", 1) for line in done.stdout.split("(GROUP=OPTION) ==\n")[1].splitlines()
    )  # then every config group with its options, read from conf/
    assert "quickstart" in groups["experiment"] and "unetplusplus" in groups["model"]
    assert groups["hydra/launcher"].split(", ")[:1] == ["basic"]


def test_modules_import_cleanly_in_order() -> None:
    for name in steelseg.MODULES:
        importlib.import_module(f"steelseg.{name}")


@pytest.mark.parametrize("command", sorted(c for c in COMMANDS if c != "steelseg-train"))
def test_every_option_says_what_it_does(command: str) -> None:
    module = importlib.import_module(COMMANDS[command].split(":")[0])
    parser = module.build_parser()
    silent = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert silent == [], f"{command}: options without help text: {silent}"
    assert parser.epilog and "exit codes" in parser.epilog  # the same codes, said by every command


def test_readme_is_a_front_page() -> None:
    """The README stays a front page (at most 200 lines) and links every page of docs/."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    unlinked = [
        p.name for p in sorted((root / "docs").glob("*.md")) if f"docs/{p.name}" not in readme
    ]
    assert unlinked == []
