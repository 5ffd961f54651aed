"""Shared data folders, crashes and full disks: locks, complete-or-absent outputs, ENOSPC.

* Processes that build the same artefact at once (synthetic data, a prepared split and its
  cache) take turns: both succeed and the artefact is whole.
* A command killed (SIGKILL) at any of its writes leaves each artefact whole or absent; run
  again, it finishes with the same result. The kill points are the renames that commit each
  file (every atomic write ends in ``os.replace``): a killed run is stopped just before the
  k-th, for every k.
* A full disk is one line naming the file and the space, and earlier files stay as they were:
  on a real small filesystem (a tmpfs, where this machine lets root mount one) and by injecting
  ENOSPC at the write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import ENTRY_POINTS, grey_of, run_main, standard_labels, write_kaggle
from steelseg import io, prepare, synth
from steelseg.cache import cache_matches

#: Runs a console script's main in a fresh interpreter, killing itself (SIGKILL) just before
#: its k-th os.replace; k = 0 never kills and prints how many there were.
KILL_AT = textwrap.dedent(
    """
    import atexit, importlib, os, signal, sys
    k, target, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    calls, real = [0], os.replace
    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    os.replace = replace
    atexit.register(lambda: print("os.replace calls:", calls[0], file=sys.stderr))
    module, func = target.split(":")
    sys.argv = [module, *argv]
    sys.exit(getattr(importlib.import_module(module), func)())
    """
)


def kill_at(k: int, command: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILL_AT, str(k), ENTRY_POINTS[command], *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def replace_calls(done: subprocess.CompletedProcess) -> int:
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("os.replace calls:")][-1]
    return int(line.split(":")[1])


def script(command: str) -> str:
    path = Path(sys.executable).parent / command
    return str(path) if path.exists() else (shutil.which(command) or command)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = standard_labels()
    root = tmp_path_factory.mktemp("shared") / "data"
    return write_kaggle(root, labels, "current", greys={i: grey_of(i) for i in labels})


def assert_split_whole(out: Path, cache: str | None = None) -> dict:
    """The prepared split in ``out`` is complete and consistent (and its cache, if named)."""
    meta = prepare.complete_split(out)
    assert meta is not None, sorted(p.name for p in out.iterdir())
    assert meta["split_sha256"] == io.file_digest(out / "split.csv")
    rows = pd.read_csv(out / "split.csv", keep_default_na=False)
    assert len(rows) == sum(meta["counts"].values())
    if cache is not None:
        folder = out / cache
        assert cache_matches(folder, io.file_digest(out / "split.csv"))
        images = np.load(folder / "images.npy", mmap_mode="r")
        assert images.shape[0] == len(rows)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    return meta


# ----------------------------------------------------------------------------- locks
def test_two_processes_prepare_one_folder_at_once(data: Path, tmp_path: Path) -> None:
    """The issue's reproduction: two steelseg-prepare --cache into one folder, together."""
    out = tmp_path / "prepared"
    args = ["--data-dir", data, "--out", out, "--n-images", "all", "--cache", "64x320"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [script("steelseg-prepare"), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, stdout, stderr in results:
        assert code == 0, stderr[-2000:]
        assert "wrote" in stdout
    assert_split_whole(out, "cache_64x320")
    waited = [stderr for _, _, stderr in results if "waiting for the prepared split" in stderr]
    reused = [stderr for _, _, stderr in results if "reusing it" in stderr]
    assert len(waited) <= 1 and len(reused) <= 1  # at most one waited, then reused the work


def test_two_processes_generate_one_synthetic_set_at_once(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    args = ["--out", out, "--n-images", "4", "--n-test", "1", "--seed", "3", "--quiet"]
    procs = [
        subprocess.Popen([script("steelseg-synth"), *map(str, args)], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert synth.is_complete(out, 4, 3, 1)
    assert len(list((out / "train_images").iterdir())) == 4


def test_a_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from steelseg.io import locked\n"
            f"with locked({str(target)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean-up runs
    holder.wait(timeout=30)
    assert (tmp_path / ".artefact.lock").exists()  # the file stays; the system dropped the lock
    with io.locked(target, "the artefact"), io.locked(target, "re-entered"):
        pass


def test_a_waiting_process_says_what_it_waits_for(tmp_path: Path) -> None:
    target = tmp_path / "split"
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from steelseg.io import locked\n"
        f"with locked({str(target)!r}, 'the prepared split'):\n    print('got it')"
    )
    with io.locked(target, "the prepared split"):
        waiter = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            waiter.wait(timeout=1.5)
            pytest.fail("the second process did not wait for the lock")
        except subprocess.TimeoutExpired:
            pass
    out, err = waiter.communicate(timeout=60)
    assert out.strip() == "got it"
    assert f"waiting for the prepared split in {target}: another process is building it" in err


@pytest.mark.slow
def test_parallel_sweep_on_a_fresh_data_root(tmp_path: Path) -> None:
    """The issue's second reproduction: two jobs at once (hydra/launcher=parallel) generate,
    prepare and cache one fresh synthetic data root; both end, with the data whole."""
    from conftest import tiny_overrides

    root = tmp_path / "fresh"
    overrides = [o for o in tiny_overrides(root) if o != "data.synthetic=null"]
    args = [
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        *overrides,
        "data.synthetic={n_images: 12, seed: 4, n_test: 1}",
        "data.n_images=null",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "model.optimizer.lr=1e-3,2e-3",  # the jobs share the data, its split and cache
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [script("steelseg-train"), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert table["status"].tolist() == ["ok", "ok"]
    assert synth.is_complete(root, 12, 4, 1)
    (prepared,) = [p for p in (root / "prepared").iterdir() if p.is_dir()]
    assert_split_whole(prepared, "cache_64x320")


# ----------------------------------------------------------------------------- killed writers
@pytest.mark.slow
def test_prepare_killed_at_every_write_is_whole_or_absent(data: Path, tmp_path: Path) -> None:
    """steelseg-prepare --cache stopped before each of its commits, then run again."""
    args = ["--data-dir", data, "--n-images", "all", "--cache", "64x320"]
    clean = kill_at(0, "steelseg-prepare", *args, "--out", tmp_path / "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    n = replace_calls(clean)
    assert n >= 3  # split.csv, the cache folder, prepare.json
    want = (tmp_path / "clean" / "split.csv").read_text()
    for k in range(1, n + 1):
        out = tmp_path / f"killed{k}"
        killed = kill_at(k, "steelseg-prepare", *args, "--out", out, cwd=tmp_path)
        assert killed.returncode == -9, killed.stderr[-2000:]
        # whole or absent: a split.csv without prepare.json is never taken for a split
        meta = prepare.complete_split(out) if out.exists() else None
        assert meta is None, f"killed at write {k}, yet prepare.json is there"
        again = kill_at(0, "steelseg-prepare", *args, "--out", out, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert_split_whole(out, "cache_64x320")
        assert (out / "split.csv").read_text() == want


@pytest.mark.slow
def test_synth_killed_at_every_write_is_rebuilt(tmp_path: Path) -> None:
    args = ["--n-images", "3", "--n-test", "1", "--seed", "2", "--quiet"]
    clean = kill_at(0, "steelseg-synth", *args, "--out", tmp_path / "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    n = replace_calls(clean)
    for k in range(1, n + 1):
        out = tmp_path / f"killed{k}"
        assert kill_at(k, "steelseg-synth", *args, "--out", out, cwd=tmp_path).returncode == -9
        assert not synth.is_complete(out, 3, 2, 1)  # never taken for a data set
        assert kill_at(0, "steelseg-synth", *args, "--out", out, cwd=tmp_path).returncode == 0
        assert synth.is_complete(out, 3, 2, 1)
        for name in ("train.csv", "sample_submission.csv"):
            assert (out / name).read_text() == (tmp_path / "clean" / name).read_text()
        assert not list(out.rglob("*.tmp"))


def test_training_prepares_again_a_split_a_killed_run_left(tiny_cfg) -> None:
    """A split.csv without prepare.json (a run killed while writing it) is prepared again."""
    from hydra.utils import instantiate

    prepared = Path(tiny_cfg.data.prepared_dir)
    instantiate(tiny_cfg.data).prepare_data()
    want = (prepared / "split.csv").read_text()
    (prepared / "prepare.json").unlink()  # as a kill between split.csv and prepare.json leaves it
    (prepared / "split.csv").write_text(want[: len(want) // 2])  # and a cut-short file
    instantiate(tiny_cfg.data).prepare_data()
    assert (prepared / "split.csv").read_text() == want
    assert prepare.complete_split(prepared) is not None


def test_eval_refuses_a_split_a_killed_run_left(tiny_ckpt: Path, tmp_path: Path) -> None:
    from steelseg.labelled import labelled_split

    run = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent.parent, run)
    cfg = (run / "config.yaml").read_text()
    prepared = Path(tiny_ckpt.parent.parent.parent / "prepared")
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    (run / "config.yaml").write_text(cfg.replace(str(prepared), str(copy)))
    assert labelled_split(run, "val")[0]
    (copy / "prepare.json").unlink()
    with pytest.raises(ValueError, match="is incomplete"):
        labelled_split(run, "val")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["steelseg-eval", "steelseg-export", "steelseg-tune"])
def test_inference_outputs_killed_at_every_write(
    command: str, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """eval.json/report.html, an export with its metadata, the tuned sidecar: each whole or
    absent after a kill at any of their writes, and the command's rerun succeeds."""
    run = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent.parent, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    args = {
        "steelseg-eval": [ckpt, "--split", "val", "--panels", "2", "--no-progress", "--out", out],
        "steelseg-export": [ckpt, "--format", "torchscript", "--out", out / "m.pt"],
        "steelseg-tune": [ckpt, "--thresholds", "0.5", "--no-progress"],
    }[command]
    # a first run makes the caches every later run reuses (--runtime auto's exports and
    # choice beside the checkpoint); the second counts the writes each kill then targets
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        (ckpt.with_suffix(".postprocess.json")).unlink(missing_ok=True)
        clean = kill_at(0, command, *args, cwd=tmp_path)
        assert clean.returncode == 0, clean.stderr[-2000:]
    n = replace_calls(clean)
    for k in range(1, n + 1):
        shutil.rmtree(out, ignore_errors=True)
        (ckpt.with_suffix(".postprocess.json")).unlink(missing_ok=True)
        assert kill_at(k, command, *args, cwd=tmp_path).returncode == -9
        if command == "steelseg-eval" and (out / "eval.json").exists():
            json.loads((out / "eval.json").read_text())  # whole
        if command == "steelseg-export" and (out / "m.pt").exists():
            from steelseg.runtime import load_metadata

            with pytest.raises(ValueError, match="has no valid|sha256 differs"):
                load_metadata(out / "m.pt")  # a model without its metadata is refused
        if command == "steelseg-tune" and ckpt.with_suffix(".postprocess.json").exists():
            json.loads(ckpt.with_suffix(".postprocess.json").read_text())
        again = kill_at(0, command, *args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
    if command == "steelseg-export":
        from steelseg.runtime import load_metadata

        assert load_metadata(out / "m.pt")["format"] == "torchscript"


# ----------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(request: pytest.FixtureRequest, tmp_path: Path):
    """A folder on a small filesystem of its own (1 MB, or the test's ``disk_size`` marker;
    a tmpfs: root only, where mounts are allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    marker = request.node.get_closest_marker("disk_size")
    size = marker.args[0] if marker else "1m"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); ENOSPC is "
                    "injected by the other tests")  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_cache_on_a_full_disk_is_one_line_and_keeps_the_split(
    data: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = small_disk / "prepared"
    args = ["--data-dir", data, "--out", out, "--n-images", "all"]
    assert run_main("steelseg-prepare", [*args, "--cache", "16x32"], monkeypatch) == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_main("steelseg-prepare", [*args, "--cache", "256x1600"], monkeypatch) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("steelseg-prepare: error: No space left on device")
    assert str(out / "cache_256x1600") in err[0] and "it needs about 49.2 MB" in err[0]
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the split and the earlier cache, byte for byte; nothing half-made
    assert_split_whole(out, "cache_16x32")


@pytest.mark.disk_size("64k")  # eval.json fits, the report does not
def test_eval_on_a_full_disk_is_one_line(
    tiny_ckpt: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = small_disk / "eval"
    args = [tiny_ckpt, "--split", "val", "--out", out, "--no-progress", "--panels", "3"]
    code = run_main("steelseg-eval", args, monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("steelseg-eval: error: No space left on device")
    assert str(out / "report.html") in err[-1]
    json.loads((out / "eval.json").read_text())  # the file written before is whole
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]


def test_export_on_a_full_disk_keeps_the_earlier_export(
    tiny_ckpt: Path, small_disk: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from steelseg.runtime import load_metadata

    earlier = small_disk / "m.pt"
    earlier.write_bytes(b"an earlier model")  # stands in for an export that fits
    (small_disk / "m.pt.json").write_text(json.dumps({"sha256": io.file_digest(earlier)}))
    args = [tiny_ckpt, "--format", "torchscript", "--out", earlier]
    assert run_main("steelseg-export", args, monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("steelseg-export: error: No space left on device")
    assert earlier.read_bytes() == b"an earlier model"
    assert load_metadata(earlier)["sha256"] == io.file_digest(earlier)  # still whole
    assert sorted(p.name for p in small_disk.iterdir()) == [".m.pt.lock", "m.pt", "m.pt.json"]


def test_enospc_at_any_atomic_write_is_one_disk_full_error(tmp_path: Path) -> None:
    """Injected at the write: the file stays as it was, the message names it."""
    path = tmp_path / "eval.json"
    path.write_text("earlier")

    def full(f) -> None:
        f.write(b"x" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(io.DiskFullError) as info:
        io.atomic_write(path, full)
    assert path.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == [
        "eval.json"
    ]
    message = str(info.value)
    assert message.startswith(f"No space left on device: cannot write {path}")
    assert "it needs more than 5 kB" in message and "free there" in message
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    with pytest.raises(io.DiskFullError), io.atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "a").write_text("x")  # a folder written whole, too
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
