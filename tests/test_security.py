"""Untrusted inputs: a checkpoint that carries code runs none of it, in any command that reads one.
The inputs are made here (no reference data needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import made_ct

from lesiontrack.checkpoint import read_checkpoint, save_checkpoint
from lesiontrack.cli import main
from lesiontrack.io import InputError
from lesiontrack.model import build_model


class _RunsCode:
    """What an attacker pickles: unpickling it calls ``os.system`` (here: creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _config(width: int = 4) -> dict:
    return {"model": {"width": width, "embedding_dim": 8, "n_scales": 5, "norm": "group"},
            "train": {"seed": 0}, "window_hu": [-1000.0, 400.0], "spacing_mm": 3.0}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("untrusted")
    f = {"ct": made_ct(d / "baseline.nii.gz"), "follow_up": made_ct(d / "follow_up.nii.gz", (6.0, -3.0, 3.0))}
    pd.DataFrame({"lesion_id": ["L0", "L1"], "x": [-15.0, 12.0], "y": [0.0, 6.0], "z": [0.0, -9.0]}).to_csv(
        d / "points.csv", index=False)
    f["points"] = d / "points.csv"
    f["marker"] = d / "code_ran"
    f["evil"] = d / "shared_model.pt"
    torch.save({"model": _RunsCode(f["marker"]), "config": _config()}, f["evil"])
    f["other_architecture"] = d / "other_architecture.pt"
    save_checkpoint({"model": build_model(4, 8, norm="group").state_dict(), "config": _config(width=8)},
                    f["other_architecture"])
    f["no_config"] = d / "no_config.pt"
    torch.save({"model": build_model(4, 8, norm="group").state_dict()}, f["no_config"])
    return f


def _resume_dir(inputs: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    (out / "checkpoint_latest.pt").write_bytes(inputs["evil"].read_bytes())
    return out


COMMANDS = {
    "track hybrid": lambda f, t: ["track", "--source", f["ct"], "--target", f["follow_up"], "--points", f["points"],
                                  "--method", "hybrid", "--checkpoint", f["evil"], "--out", t / "tracked.csv"],
    "track multiscale": lambda f, t: ["track", "--source", f["ct"], "--target", f["follow_up"], "--points",
                                      f["points"], "--method", "multiscale", "--checkpoint", f["evil"], "--out",
                                      t / "tracked.csv"],
    "embed": lambda f, t: ["embed", "--checkpoint", f["evil"], "--volumes", f["ct"], "--out-dir", t / "embeddings"],
    "follow": lambda f, t: ["follow", "--scans", f["ct"], f["follow_up"], "--points", f["points"], "--checkpoint",
                            f["evil"], "--out", t / "history"],
    "pretrain resume": lambda f, t: ["pretrain", "--volumes", f["ct"], "--validation", f["follow_up"], "--out-dir",
                                     _resume_dir(f, t)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_checkpoint_that_carries_code_runs_none_of_it(inputs, tmp_path, capsys, command):
    argv = [str(a) for a in COMMANDS[command](inputs, tmp_path)]
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert not inputs["marker"].exists(), f"{command}: the checkpoint's code ran"
    checkpoint = tmp_path / "model" / "checkpoint_latest.pt" if command == "pretrain resume" else inputs["evil"]
    assert stderr.splitlines() == [f"lesiontrack {argv[0]}: {checkpoint}: refused: the checkpoint's pickle names "
                                   "posix.system; a lesiontrack checkpoint holds only weights and plain values, and "
                                   "nothing in it was run"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written


def test_checkpoints_of_another_network_or_without_config_are_named(inputs):
    with pytest.raises(InputError, match=r"other_architecture.pt: its model weights do not fit the network"):
        from lesiontrack.track.embed import load_model
        load_model(inputs["other_architecture"])
    with pytest.raises(InputError, match=r"no_config.pt: not a lesiontrack pretraining checkpoint: no config"):
        read_checkpoint(inputs["no_config"])


def test_a_checkpoint_written_before_the_state_was_plain_still_reads(tmp_path):
    """Earlier checkpoints hold numpy scalars in their log and torch's version string: exactly those
    types are allowed, and they come back as they were."""
    import numpy as np

    state = {"model": build_model(4, 8, norm="group").state_dict(), "config": _config(),
             "log": [{"epoch": 0, "train_loss": np.float64(1.25), "steps": np.int64(3)}],
             "machine": {"torch": torch.__version__}}
    torch.save(state, tmp_path / "earlier.pt")
    read = read_checkpoint(tmp_path / "earlier.pt")
    assert read["log"][0]["train_loss"] == 1.25 and read["log"][0]["steps"] == 3
    save_checkpoint(state, tmp_path / "now.pt")  # written plain: no numpy or torch type left
    now = torch.load(tmp_path / "now.pt", weights_only=True)
    assert type(now["log"][0]["train_loss"]) is float and type(now["machine"]["torch"]) is str


HOSTILE_IDS = ["../../evil", "/abs/path/owned", "a/b", "a_b", "a~2Fb", "..", ".hidden", "Läsion 7 ✓", "CON", "nul.txt",
               "NA", "null", "C:\\temp\\x", "x" * 150]


def test_safe_name_keeps_ids_inside_their_folder_distinct_and_reversible():
    from lesiontrack.io import MAX_NAME_BYTES, original_name, safe_name

    names = [safe_name(i) for i in HOSTILE_IDS]
    assert len(set(names)) == len(names)  # a/b, a_b and a~2Fb: three names
    for text, name in zip(HOSTILE_IDS, names, strict=True):
        assert original_name(name) == text
        assert "/" not in name and "\\" not in name and not name.startswith(".") and not name.endswith(".")
        assert name.encode("ascii") and len(name) <= MAX_NAME_BYTES
        assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
    assert [safe_name(i) for i in ("L0", "test011_t0", "1.2.840.113654.2.55")] == ["L0", "test011_t0",
                                                                                 "1.2.840.113654.2.55"]
    with pytest.raises(ValueError, match="at most"):
        safe_name("x" * 300)


def _hostile_points(inputs: dict[str, Path], tmp_path: Path) -> Path:
    points = pd.read_csv(inputs["points"])
    table = pd.DataFrame({"lesion_id": HOSTILE_IDS, "x": points["x"].iloc[0], "y": points["y"].iloc[0],
                          "z": points["z"].iloc[0]})
    path = tmp_path / "inputs" / "hostile.csv"
    path.parent.mkdir()
    table.to_csv(path, index=False)
    return path


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_no_lesion_id_writes_outside_the_qa_folder_and_each_gets_its_own_picture(inputs, tmp_path, monkeypatch):
    from lesiontrack.io import original_name

    points = _hostile_points(inputs, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # "../../evil" would land two folders above the QA folder
    before = _files(tmp_path)
    assert main(["track", "--source", str(inputs["ct"]), "--target", str(inputs["ct"]), "--points", str(points),
                 "--method", "identity", "--out", str(work / "out" / "tracked.csv"), "--qa-dir",
                 str(work / "out" / "qa")]) == 0
    assert not Path("/abs/path/owned.png").exists()
    written = _files(tmp_path) - before
    assert {p.parent for p in written} == {work / "out", work / "out" / "qa"}
    pictures = sorted(p for p in written if p.parent.name == "qa")
    assert sorted(original_name(p.name.removesuffix(".png")) for p in pictures) == sorted(HOSTILE_IDS)
    tracked = pd.read_csv(work / "out" / "tracked.csv", keep_default_na=False, dtype={"lesion_id": str})
    assert tracked["lesion_id"].tolist() == HOSTILE_IDS  # "NA" and "null" are ids, not missing values


def test_follow_gives_a_b_and_a_b_their_own_pictures(inputs, tmp_path):
    from lesiontrack.follow import picture_name

    points = _hostile_points(inputs, tmp_path)
    out = tmp_path / "history"
    before = _files(tmp_path)
    assert main(["follow", "--scans", str(inputs["ct"]), str(inputs["follow_up"]), "--points", str(points), "--method",
                 "identity", "--out", str(out)]) == 0
    written = _files(tmp_path) - before
    assert {p.parent for p in written} == {out}
    pictures = {p.name for p in written if p.suffix == ".png"}
    assert pictures == {f"{picture_name(i)}.png" for i in HOSTILE_IDS} and len(pictures) == len(HOSTILE_IDS)
    history = pd.read_csv(out / "history.csv", keep_default_na=False, dtype={"lesion_id": str})
    assert set(history["lesion_id"]) == set(HOSTILE_IDS)
    page = (out / "index.html").read_text()
    assert f'src="{picture_name("a/b")}.png"' in page and f'src="{picture_name("a_b")}.png"' in page


def _hashes(*paths: Path) -> dict[str, str]:
    import hashlib

    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture
def copies(inputs, tmp_path) -> dict[str, Path]:
    """Copies of the inputs that a command may be asked to write over, and a DICOM-like folder."""
    import shutil

    d = tmp_path / "in"
    d.mkdir()
    f = {name: Path(shutil.copy2(inputs[name], d / inputs[name].name)) for name in ("ct", "follow_up", "points")}
    f["series"] = d / "series"
    f["series"].mkdir()
    shutil.copy2(inputs["ct"], f["series"] / "slice.nii.gz")
    return f


OVERLAPS = {
    "track --out the source CT": (lambda f, t: ["track", "--source", f["ct"], "--target", f["follow_up"], "--points",
                                                f["points"], "--method", "identity", "--out", f["ct"]],
                                  "--out {ct}: is the input --source"),
    "track --out the points": (lambda f, t: ["track", "--source", f["ct"], "--target", f["follow_up"], "--points",
                                             f["points"], "--method", "identity", "--out",
                                             f["points"].parent / ".." / "in" / f["points"].name],
                               "is the input --points"),
    "track --qa-dir the target's folder": (lambda f, t: ["track", "--source", f["ct"], "--target", f["series"],
                                                         "--points", f["points"], "--method", "identity", "--out",
                                                         t / "t.csv", "--qa-dir", f["series"]],
                                           "--qa-dir {series}: is the input --target"),
    "track --out inside the target's folder": (lambda f, t: ["track", "--source", f["ct"], "--target", f["series"],
                                                             "--points", f["points"], "--method", "identity", "--out",
                                                             f["series"] / "t.csv"],
                                               "lies inside the input --target"),
    "follow --out a scan's folder": (lambda f, t: ["follow", "--scans", f["ct"], f["series"], "--points",
                                                   f["points"], "--method", "identity", "--out", f["series"]],
                                     "--out {series}: is the input --scans[2]"),
    "follow --out the folder of its inputs": (lambda f, t: ["follow", "--scans", f["ct"], f["follow_up"], "--points",
                                                            f["points"], "--method", "identity", "--out",
                                                            f["ct"].parent],
                                              "holds the input"),
    "resample --output its input": (lambda f, t: ["resample", "--input", f["ct"], "--output", f["ct"]],
                                    "--output {ct}: is the input --input"),
    "evaluate --out its predictions": (lambda f, t: ["evaluate", "--predictions", f["points"], "--pairs",
                                                     f["points"], "--out", f["points"]], "is the input --predictions"),
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_an_output_over_an_input_stops_before_any_work(copies, tmp_path, capsys, case):
    make, culprit = OVERLAPS[case]
    argv = [str(a) for a in make(copies, tmp_path)]
    before = _hashes(copies["ct"].parent)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and culprit.format(**copies) in lines[0], lines
    assert _hashes(copies["ct"].parent) == before and sorted(copies["ct"].parent.iterdir()) == sorted(
        copies[k] for k in ("ct", "follow_up", "points", "series"))


def test_follow_replaces_an_earlier_history_whole_and_refuses_other_folders(inputs, tmp_path, capsys):
    out = tmp_path / "history"
    follow = ["follow", "--scans", str(inputs["ct"]), str(inputs["follow_up"]), "--points", str(inputs["points"]),
              "--method", "identity", "--out", str(out)]
    assert main(follow) == 0
    first = sorted(p.name for p in out.iterdir())
    (out / "sr_t2.dcm").write_bytes(b"an earlier run's report of another lesion set")
    (out / "lesion_gone.png").write_bytes(b"an earlier run's picture")
    assert main(follow) == 0  # an earlier history: replaced whole, nothing of it merged
    assert sorted(p.name for p in out.iterdir()) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folder left
    (out / "notes.txt").write_text("the user's own notes")
    capsys.readouterr()
    assert main(follow) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "scan.nii.gz").write_bytes(b"x")
    assert main([*follow[:-1], str(other)]) == 2 and (other / "scan.nii.gz").read_bytes() == b"x"


def test_sigterm_during_follow_leaves_no_staging_folder(inputs, tmp_path):
    """SIGTERM while follow writes its pictures: the process ends (exit 143) and leaves neither
    the history nor its hidden staging folder."""
    import signal
    import subprocess
    import sys
    import time

    points = pd.DataFrame({"lesion_id": [f"L{k}" for k in range(60)], "x": -15.0, "y": 0.0, "z": 0.0})
    points.to_csv(tmp_path / "many.csv", index=False)
    out = tmp_path / "history"
    process = subprocess.Popen([sys.executable, "-m", "lesiontrack.cli", "follow", "--scans", str(inputs["ct"]),
                                str(inputs["follow_up"]), "--points", str(tmp_path / "many.csv"), "--method",
                                "identity", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name.endswith(".png") for p in tmp_path.rglob(".history.*/*")):
        time.sleep(0.02)
    assert process.poll() is None, "follow ended before its pictures were half written"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == ("lesiontrack follow: stopped by SIGTERM; nothing of this run was left "
                                               "behind")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.csv"]


def test_a_full_disk_is_one_line_naming_the_output(inputs, tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "tracked.csv"
    assert main(["track", "--source", str(inputs["ct"]), "--target", str(inputs["follow_up"]), "--points",
                 str(inputs["points"]), "--method", "identity", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"lesiontrack track: {out}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_prediction_outside_the_target_is_never_found(inputs, tmp_path):
    """The identity tracker predicts the source point itself; on a follow-up that covers only
    part of the baseline, a lesion outside it must come back not found (it was "found" 55 mm
    outside the scan), the one inside found."""
    far = made_ct(tmp_path / "elsewhere.nii.gz", (0.0, 0.0, 100.0))  # z from 40 to 160 mm
    points = pd.DataFrame({"lesion_id": ["inside", "outside"], "x": [0.0, 0.0], "y": [0.0, 0.0], "z": [50.0, -40.0]})
    ct = made_ct(tmp_path / "long.nii.gz", (0.0, 0.0, 30.0), size=(56, 56, 80))  # z from -90 to 150 mm
    points.to_csv(tmp_path / "p.csv", index=False)
    assert main(["track", "--source", str(ct), "--target", str(far), "--points", str(tmp_path / "p.csv"), "--method",
                 "identity", "--out", str(tmp_path / "t.csv")]) == 0
    tracked = pd.read_csv(tmp_path / "t.csv")
    assert tracked["found"].tolist() == [True, False]


def test_a_mask_given_as_a_ct_is_tracked_with_one_warning(inputs, tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(inputs["follow_up"]))
    mask = sitk.Cast(sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > -500).astype(np.uint8)), sitk.sitkUInt8)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    assert main(["track", "--source", str(inputs["ct"]), "--target", str(tmp_path / "mask.nii.gz"), "--points",
                 str(inputs["points"]), "--method", "identity", "--out", str(tmp_path / "t.csv")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"lesiontrack: warning: {tmp_path / 'mask.nii.gz'}: values 0 to 1 (uint8) do not look like "
                        "CT in HU (air near -1000, bone above 300): a mask or a rescaled image? tracked as given"]
