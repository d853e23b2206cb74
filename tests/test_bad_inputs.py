"""A catalogue of bad inputs: each gives exit code 2, one line naming the culprit, no traceback, and
leaves no output behind, the inputs unchanged; every input is made here (no reference data needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import made_ct

from lesiontrack.cli import main


def _points(path: Path, rows: list[list], columns=("lesion_id", "x", "y", "z")) -> Path:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, written once, all made here (no reference data): a CT-like volume, its
    label map and DICOM series, broken copies, tables in the DLS and NLSTx formats, checkpoints."""
    from lesiontrack.data.nlst_synth import _write_dicom

    d = tmp_path_factory.mktemp("inputs")
    ct = made_ct(d / "made_ct.nii.gz", size=(64, 64, 48), spacing=(2.5, 2.5, 3.0), seed=1)
    image = sitk.ReadImage(str(ct))
    hu = sitk.GetArrayFromImage(image)
    seg = d / "made_seg.nii.gz"  # TotalSegmentator v2 ids: 5 (liver) in the soft tissue, 27 (L5) in the bone
    labels = sitk.GetImageFromArray(np.where(hu > 500, 27, np.where(hu > -500, 5, 0)).astype(np.uint8))
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(seg))
    dicom = d / "made_ct_dicom"
    _write_dicom(image, dicom, "1.2.826.0.1.3680043.8.498.77", "100002", 0)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(np.asarray(image.GetSize()) / 2 - 0.5))
    f = {"ct": ct, "seg": seg, "dicom": dicom, "one_slice": sorted(dicom.iterdir())[0]}
    f["trunc_gz"] = d / "truncated.nii.gz"
    f["trunc_gz"].write_bytes(ct.read_bytes()[:10240])
    raw = gzip.decompress(ct.read_bytes())
    f["trunc_nii"] = d / "short.nii"
    f["trunc_nii"].write_bytes(raw[: len(raw) // 2])
    zero_spacing = bytearray(raw)
    pixdim = list(struct.unpack("<8f", zero_spacing[76:108]))
    pixdim[3] = 0.0
    zero_spacing[76:108] = struct.pack("<8f", *pixdim)
    f["zero_spacing"] = d / "zero_spacing.nii"
    f["zero_spacing"].write_bytes(bytes(zero_spacing))
    f["empty"] = d / "empty.nii.gz"
    f["empty"].write_bytes(b"")
    f["text_image"] = d / "notes.nii.gz"
    f["text_image"].write_bytes(gzip.compress(b"not an image at all\n" * 40))
    f["image2d"] = d / "slice2d.nii.gz"
    sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(f["image2d"]))
    labels = sitk.ReadImage(str(seg))
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(np.add(labels.GetOrigin(), (100.0, 0.0, 0.0))))
    for name, volume in (("seg_shifted", shifted), ("seg_zero", labels * 0),
                         ("seg_x1000", sitk.Cast(labels, sitk.sitkInt32) * 1000)):
        f[name] = d / f"{name}.nii.gz"
        sitk.WriteImage(volume, str(f[name]))

    inside = [[f"L{k}", *(centre + offset)] for k, offset in enumerate(([-20.0, 0, 0], [20.0, 0, 0]))]
    f["points"] = _points(d / "points.csv", inside)
    f["points_text"] = _points(d / "points_text.csv", [inside[0], ["L1", "2,5", 0.0, 0.0]])
    f["points_zero_bytes"] = d / "points_zero_bytes.csv"
    f["points_zero_bytes"].write_text("")
    f["points_no_z"] = _points(d / "points_no_z.csv", [row[:3] for row in inside], ("lesion_id", "x", "y"))
    f["points_duplicate"] = _points(d / "points_duplicate.csv", [inside[0], inside[0]])
    f["points_negative_radius"] = _points(d / "points_negative_radius.csv", [[*inside[0], 5.0], [*inside[1], -3.0]],
                                          ("lesion_id", "x", "y", "z", "radius_mm"))
    f["points_radius"] = _points(d / "points_radius.csv", [[*inside[0], 5.0], [*inside[1], 6.0]],
                                 ("lesion_id", "x", "y", "z", "radius_mm"))
    f["points_inf"] = _points(d / "points_inf.csv", [inside[0], ["L1", np.inf, 0.0, 0.0]])
    f["points_header_only"] = _points(d / "points_header_only.csv", [])
    f["points_outside"] = _points(d / "points_outside.csv", [inside[0], ["far", *np.add(centre, (0.0, 0.0, 5000.0))]])

    f["ckpt_truncated"] = d / "truncated.pt"
    f["ckpt_truncated"].write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    f["ckpt_text"] = d / "notes.pt"
    f["ckpt_text"].write_text("this is not a checkpoint\n")
    f["calibration_truncated"] = d / "calibration.json"
    f["calibration_truncated"].write_text('{"calibrated": true, "thresh')
    f["bad_yaml"] = d / "bad.yaml"
    f["bad_yaml"].write_text("track:\n  context_mm: 24\n   refine_mm: [1, 2\n")
    f["unknown_key"] = d / "unknown.yaml"
    f["unknown_key"].write_text("track:\n  contextmm: 24\n")
    f["wrong_type"] = d / "wrong_type.yaml"
    f["wrong_type"].write_text("track:\n  refine_mm: twenty\n")
    f["wrong_setting"] = d / "wrong_setting.yaml"
    f["wrong_setting"].write_text("track:\n  registration:\n    affine:\n      iterations: many\n")
    f["setting_out_of_range"] = d / "out_of_range.yaml"
    f["setting_out_of_range"].write_text("track:\n  hybrid:\n    choice_overlap: 2\n")
    f["levels_disagree"] = d / "levels_disagree.yaml"
    f["levels_disagree"].write_text("track:\n  registration:\n    deformable:\n      bspline_evaluations: [40, 15]\n")
    f["processes"] = d / "processes.yaml"
    f["processes"].write_text("train:\n  processes: 3\n  batch_size: 4\n")

    # tables of the workflow form and of the evaluation
    pairs = pd.DataFrame({"pair_id": ["p1", "p1", "p2", "p2"], "lesion_id": ["a", "a", "b", "b"],
                          "direction": ["forward", "backward"] * 2, "source_image": ["ct"] * 4,
                          "target_image": ["ct"] * 4, "source_x": centre[0], "source_y": centre[1],
                          "source_z": centre[2], "target_x": centre[0], "target_y": centre[1], "target_z": centre[2],
                          "target_radius_mm": 5.0, "split": ["test", "test", "train", "train"]})
    f["pairs"] = d / "pairs.csv"
    pairs.to_csv(f["pairs"], index=False)
    f["pairs_text"] = d / "pairs_text.csv"
    pairs.assign(source_x=["1.5", "x", "2", "3"]).to_csv(f["pairs_text"], index=False)
    f["pairs_duplicate"] = d / "pairs_duplicate.csv"
    pd.concat([pairs, pairs.iloc[:1]]).to_csv(f["pairs_duplicate"], index=False)
    f["pairs_negative_radius"] = d / "pairs_negative_radius.csv"
    pairs.assign(target_radius_mm=[5.0, -2.0, 5.0, 5.0]).to_csv(f["pairs_negative_radius"], index=False)
    f["pairs_outside"] = d / "pairs_outside.csv"
    pairs.assign(target_z=centre[2] + 5000.0).to_csv(f["pairs_outside"], index=False)
    predictions = pairs[["pair_id", "direction"]].assign(pred_x=centre[0], pred_y=centre[1], pred_z=centre[2])
    f["predictions_test"] = d / "predictions_test.csv"
    predictions.iloc[:2].to_csv(f["predictions_test"], index=False)
    f["predictions_text"] = d / "predictions_text.csv"
    predictions.assign(pred_x=["a", "1", "2", "3"]).to_csv(f["predictions_text"], index=False)
    f["predictions_unknown"] = d / "predictions_unknown.csv"
    pd.concat([predictions, predictions.iloc[:1].assign(pair_id="p9")]).to_csv(f["predictions_unknown"],
                                                                                 index=False)
    f["volumes_other"] = d / "volumes_other.csv"
    pd.DataFrame({"image_id": ["other"], "path": [str(ct)]}).to_csv(f["volumes_other"], index=False)
    f["volumes"] = d / "volumes.csv"
    pd.DataFrame({"image_id": ["ct"], "path": [str(ct)]}).to_csv(f["volumes"], index=False)
    f["images_one_bad"] = d / "images_one_bad.csv"
    pd.DataFrame({"image_id": ["ct", "broken"], "path": [str(ct), str(f["trunc_gz"])]}).to_csv(f["images_one_bad"],
                                                                                               index=False)
    f["images_duplicate"] = d / "images_duplicate.csv"
    pd.DataFrame({"image_id": ["ct", "ct"], "path": [str(ct), str(ct)]}).to_csv(f["images_duplicate"], index=False)
    f["images_no_path"] = d / "images_no_path.csv"
    pd.DataFrame({"image_id": ["ct"]}).to_csv(f["images_no_path"], index=False)
    entry = {"target center": [60, 50, 15], "target spacing": [3.0, 3.0, 3.0], "target recist diameter": [4, 3],
             "target box": [55, 45, 12, 10, 10, 6], "predict target center": [61, 50, 15]}
    f["dls_truncated"] = d / "dls_truncated.json"
    f["dls_truncated"].write_text(json.dumps({"0001": entry, "0002": entry})[:70])
    f["dls_string_centre"] = d / "dls_string_centre.json"
    f["dls_string_centre"].write_text(json.dumps({"0001": entry, "0002": {**entry, "target center": "60,50,15"}}))
    first = {"source": "000016_01_01_002-014.nii.gz", "target": "000016_02_01_223-283.nii.gz",
             "source box": [250.0, 200.0, 3.0, 30.0, 30.0, 6.0], "target box": [255.0, 190.0, 20.0, 30.0, 28.0, 16.0],
             "source center": [265.0, 215.0, 6.0], "target center": [270.0, 204.0, 28.0],
             "source spacing": [0.7, 0.7, 5.0], "target spacing": [0.8, 0.8, 1.0],
             "source recist diameter": [22.0, 20.0], "target recist diameter": [20.0, 18.0]}
    second = {**first, "source": first["target"], "target": first["source"], "source box": first["target box"],
              "target box": first["source box"], "source center": first["target center"],
              "target center": first["source center"], "source spacing": first["target spacing"],
              "target spacing": first["source spacing"]}
    for name, field, value in (("dls_string_recist", "target recist diameter", ["12", "x"]),
                               ("dls_negative_recist", "target recist diameter", [-5.0, 3.0]),
                               ("dls_string_spacing", "source spacing", "0.8,0.8,5"),
                               ("dls_zero_spacing", "target spacing", [0.8, 0.8, 0.0]),
                               ("dls_bad_name", "target", "000001_01_01.nii.gz"),
                               ("dls_short_box", "target box", [1, 2, 3])):
        f[name] = d / f"{name}.json"
        f[name].write_text(json.dumps({"0001": first, "0002": {**second, field: value}}))
    from lesiontrack.data.nlst_synth import NLSTX_HEADER

    nlstx = pd.DataFrame([[0, pid, year, "B", f"1.2.826.0.1.3680043.8.498.{pid}.{year}", 1.0, 98.0 + 4 * year,
                           200.0, 150.0, 17.0, 13.0] for pid in (100001, 100002) for year in (0, 1, 2)],
                         columns=NLSTX_HEADER)
    for name, column, value in (("nlstx_text_year", "study_yr", "T1"),
                                ("nlstx_text_slice", "Slice number", "middle"),
                                ("nlstx_zero_width", "Bounding box width (pixels)", 0.0),
                                ("nlstx_text_nodule", "Abnormality UID", "first")):
        f[name] = d / f"{name}.csv"
        bad = nlstx.astype({column: object})
        bad.loc[3, column] = value
        bad.to_csv(f[name], index=False)
    f["nlstx_duplicate"] = d / "nlstx_duplicate.csv"
    pd.concat([nlstx, nlstx.iloc[[2]]]).to_csv(f["nlstx_duplicate"], index=False)
    f["landmarks_unknown"] = d / "landmarks_unknown.csv"
    pd.DataFrame({"name": ["carina", "belly_button"], "x": [0.0, 1.0], "y": 0.0, "z": 0.0}).to_csv(
        f["landmarks_unknown"], index=False)
    f["lesions_no_status"] = d / "lesions_no_status.csv"
    pd.DataFrame({"lesion_id": ["a"], "image_id": ["ct"], "x": [0.0], "y": 0.0, "z": 0.0, "radius_mm": 4.0}).to_csv(
        f["lesions_no_status"], index=False)
    f["a_file"] = d / "a_file.txt"
    f["a_file"].write_text("a file where a folder is expected\n")
    return f


OWN = ["track", "--source", "{ct}", "--target", "{ct}", "--points", "{points}", "--method", "identity",
       "--out", "{o}/tracked.csv"]


def _own(base: list[str] = OWN, **replace: str) -> list[str]:
    """``base`` with each ``--flag`` of ``replace`` given that value (added where it is not there)."""
    args = list(base)
    for flag, value in replace.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def _dls(annotations: str) -> list[str]:
    return ["pairs", "--dataset", "dls", "--test", annotations, "--out-dir", "{o}/dls"]


def _nlst(nlstx: str) -> list[str]:
    return ["pairs", "--dataset", "nlst", "--nlstx", nlstx, "--dicom-dir", "{o}", "--out-dir", "{o}/nlst",
            "--convention", "instance_number"]


CASES = [
    # own-data tracking: the volumes
    ("truncated gzip source", _own(source="{trunc_gz}"), "truncated.nii.gz: damaged or truncated gzip"),
    ("truncated NIfTI target", _own(target="{trunc_nii}"), "short.nii: truncated"),
    ("zero-byte source", _own(source="{empty}"), "empty.nii.gz"),
    ("text file as source", _own(source="{text_image}"), "notes.nii.gz"),
    ("2D image as source", _own(source="{image2d}"), "slice2d.nii.gz: a 2D image"),
    ("one-slice source", _own(source="{one_slice}"), "at least 3 along every axis"),
    ("zero voxel size", _own(target="{zero_spacing}"), "zero_spacing.nii: NIfTI header gives voxel sizes"),
    ("missing source", _own(source="{o}/nowhere.nii.gz"), "nowhere.nii.gz: no such file"),
    ("DICOM folder without DICOM", _own(target="{o}"), "{o}"),
    # own-data tracking: the points
    ("non-numeric x", _own(points="{points_text}"), "row 2 (L1): x = '2,5' is not a number"),
    ("zero-byte points", _own(points="{points_zero_bytes}"), "points_zero_bytes.csv: empty file"),
    ("points without z", _own(points="{points_no_z}"), "points_no_z.csv: missing column(s) ['z']"),
    ("duplicate lesion id", _own(points="{points_duplicate}"), "row 2 (L0): duplicate lesion_id"),
    ("negative radius", _own(points="{points_negative_radius}"), "radius_mm = -3 must be > 0"),
    ("infinite coordinate", _own(points="{points_inf}"), "x = inf is not a finite number"),
    ("no points", _own(points="{points_header_only}"), "points_header_only.csv: no points"),
    ("point outside the source", _own(points="{points_outside}"), "row 2 (far)"),
    ("missing points file", _own(points="{o}/none.csv"), "none.csv: no such file"),
    # own-data tracking: outputs, device, model, presence, config
    ("--out is a folder", _own(out="{a_folder}"), "is a folder, expected a file"),
    ("--out under a file", _own(out="{a_file}/tracked.csv"), "cannot be written"),
    ("--qa-dir under a file", _own(qa_dir="{a_file}/qa"), "cannot be written"),
    ("--qa-dir is a file", _own(qa_dir="{a_file}"), "is a file, expected a folder"),
    ("--device cuda without CUDA", _own(device="cuda"), "--device cuda: no CUDA device"),
    ("--device unknown", _own(device="tpu"), "--device tpu: expected cpu or cuda"),
    ("embedding method without checkpoint", _own(method="multiscale"), "method multiscale: needs --checkpoint"),
    ("truncated checkpoint", _own(method="multiscale", checkpoint="{ckpt_truncated}"), "truncated.pt: not a readable"),
    ("text checkpoint", _own(method="multiscale", checkpoint="{ckpt_text}"), "notes.pt: not a readable"),
    ("missing checkpoint", _own(method="multiscale", checkpoint="{o}/no.pt"), "no.pt: no such checkpoint"),
    ("--presence without radius", _own(presence="{calibration_truncated}"), "needs a radius_mm column"),
    ("damaged presence calibration", _own(points="{points_radius}", presence="{calibration_truncated}"),
     "calibration.json: not a presence calibration"),
    ("invalid YAML overlay", _own(config="{bad_yaml}"), "bad.yaml: line 3"),
    ("invalid YAML for the workflow", ["config", "--quiet", "{bad_yaml}"], "bad.yaml: line 3: not valid YAML"),
    ("unknown key for the workflow", ["config", "{unknown_key}"], "unknown key 'track.contextmm'"),
    ("unknown config key", _own(config="{unknown_key}"), "unknown key 'track.contextmm'"),
    ("config value of a wrong type", _own(config="{wrong_type}"), "track.refine_mm = 'twenty'"),
    ("tracker setting of a wrong type", _own(method="affine", config="{wrong_setting}"),
     "track.registration.affine.iterations = 'many': expected number"),
    ("tracker setting out of range", _own(config="{setting_out_of_range}"),
     "track.hybrid: choice_overlap = 2: must lie in [0, 1]"),
    ("tracker setting out of range for the workflow", ["config", "{setting_out_of_range}"],
     "track.hybrid: choice_overlap = 2: must lie in [0, 1]"),
    ("registration levels that disagree", _own(method="deformable", config="{levels_disagree}"),
     "track.registration.deformable: bspline_shrink_factors, bspline_smoothing_sigmas_mm"),
    ("own data without a target", ["track", "--source", "{ct}", "--points", "{points}", "--out", "{o}/t.csv"],
     "own data needs --source, --target and --points"),
    ("unknown method", _own(method="magic"), "invalid choice: 'magic'"),
    # tracking a pairs table
    ("missing pairs file", ["track", "--pairs", "{o}/pairs.csv", "--method", "identity", "--out", "{o}/p.csv"],
     "pairs.csv: no such file"),
    ("non-numeric source_x", ["track", "--pairs", "{pairs_text}", "--method", "identity", "--out", "{o}/p.csv"],
     "pairs_text.csv: row 2 (p1 backward): source_x = 'x' is not a number"),
    ("duplicate pair", ["track", "--pairs", "{pairs_duplicate}", "--method", "identity", "--out", "{o}/p.csv"],
     "duplicate pair_id/direction"),
    ("unknown split", ["track", "--pairs", "{pairs}", "--method", "identity", "--split", "valid", "--out",
                       "{o}/p.csv"], "no pairs in split 'valid'"),
    ("image in no volume table", ["track", "--pairs", "{pairs}", "--method", "affine", "--volumes", "{volumes_other}",
                                  "--out", "{o}/p.csv"], "image(s) ['ct'] not in the volume tables"),
    # resampling
    ("negative spacing", ["resample", "--input", "{ct}", "--output", "{o}/r.nii.gz", "--spacing", "-2"],
     "spacing -2 mm: must be a positive number"),
    ("nan spacing", ["resample", "--input", "{ct}", "--output", "{o}/r.nii.gz", "--spacing", "nan"],
     "spacing nan mm"),
    ("zero spacing", ["resample", "--input", "{ct}", "--output", "{o}/r.nii.gz", "--spacing", "0"], "spacing 0 mm"),
    ("tiny spacing", ["resample", "--input", "{ct}", "--output", "{o}/r.nii.gz", "--spacing", "0.01"],
     "a spacing that small is not meant"),
    ("huge spacing", ["resample", "--input", "{ct}", "--output", "{o}/r.nii.gz", "--spacing", "1000"],
     "at least 3 per axis"),
    ("truncated input", ["resample", "--input", "{trunc_gz}", "--output", "{o}/r.nii.gz"], "truncated.nii.gz"),
    ("missing input", ["resample", "--input", "{o}/none.nii.gz", "--output", "{o}/r.nii.gz"], "no such file"),
    ("output is a folder", ["resample", "--input", "{ct}", "--output", "{a_folder}"], "is a folder"),
    ("images table without path", ["resample", "--images", "{images_no_path}", "--out-dir", "{o}/r", "--table",
                                   "{o}/r.csv"], "missing column(s) ['path']"),
    ("one good and one bad volume to resample", ["resample", "--images", "{images_one_bad}", "--out-dir", "{o}/r",
                                                 "--table", "{o}/r.csv"], "truncated.nii.gz: damaged or truncated"),
    ("one image id twice", ["resample", "--images", "{images_duplicate}", "--out-dir", "{o}/r", "--table",
                            "{o}/r.csv"], "images_duplicate.csv: row 2 (ct): duplicate image_id"),
    # evaluation
    ("truncated JSON", ["evaluate", "--predictions", "{dls_truncated}", "--out", "{o}/m.json"],
     "dls_truncated.json: not valid JSON (line 1"),
    ("centre given as a string", ["evaluate", "--predictions", "{dls_string_centre}", "--out", "{o}/m.json"],
     "entry 2 field 'target center' = '60,50,15': expected 3 finite numbers"),
    ("predictions CSV without pairs", ["evaluate", "--predictions", "{predictions_test}", "--out", "{o}/m.json"],
     "needs the ground-truth pairs.csv (--pairs)"),
    ("predictions of one split, no --split", ["evaluate", "--predictions", "{predictions_test}", "--pairs",
                                              "{pairs}", "--out", "{o}/m.json"], "give --split"),
    ("non-numeric prediction", ["evaluate", "--predictions", "{predictions_text}", "--pairs", "{pairs}", "--out",
                                "{o}/m.json"], "pred_x = 'a' is not a number"),
    ("missing predictions", ["evaluate", "--predictions", "{o}/none.csv", "--pairs", "{pairs}", "--out",
                             "{o}/m.json"], "none.csv: no such file"),
    ("prediction of an unknown pair", ["evaluate", "--predictions", "{predictions_unknown}", "--pairs", "{pairs}",
                                       "--out", "{o}/m.json"], "prediction for unknown pair p9"),
    ("negative target radius", ["evaluate", "--predictions", "{predictions_test}", "--pairs",
                                "{pairs_negative_radius}", "--split", "test", "--out", "{o}/m.json"],
     "target_radius_mm = -2 must be > 0"),
    # the paper's datasets: DLS annotation files and the NLSTx table
    ("DLS RECIST diameter as text", _dls("{dls_string_recist}"),
     "dls_string_recist.json: entry 2 field 'target recist diameter' = ['12', 'x']"),
    ("DLS negative RECIST diameter", _dls("{dls_negative_recist}"), "entry 2 field 'target recist diameter' = [-5.0"),
    ("DLS spacing as text", _dls("{dls_string_spacing}"), "entry 2 field 'source spacing' = '0.8,0.8,5'"),
    ("DLS zero slice spacing", _dls("{dls_zero_spacing}"), "entry 2 field 'target spacing' = [0.8, 0.8, 0.0]"),
    ("DLS volume name without slices", _dls("{dls_bad_name}"), "entry 2 field 'target': volume name"),
    ("DLS box of 3 numbers", _dls("{dls_short_box}"), "entry 2 field 'target box' = [1, 2, 3]: expected 6"),
    ("NLSTx year as text", _nlst("{nlstx_text_year}"), "nlstx_text_year.csv: row 4 ("),
    ("NLSTx slice as text", _nlst("{nlstx_text_slice}"), "slice_number = 'middle' is not a number"),
    ("NLSTx box of zero width", _nlst("{nlstx_zero_width}"), "box_w = 0 must be > 0 pixels"),
    ("NLSTx nodule id as text", _nlst("{nlstx_text_nodule}"), "nodule = 'first' is not a number"),
    ("NLSTx nodule twice in a year", _nlst("{nlstx_duplicate}"), "row 7 ("),
    # landmarks
    ("label map shifted from its image", ["landmarks", "--backend", "totalseg", "--image", "{ct}", "--labels",
                                          "{seg_shifted}", "--out", "{o}/l.csv"], "seg_shifted.nii.gz: its origin"),
    ("a CT as label map", ["landmarks", "--backend", "totalseg", "--labels", "{ct}", "--out", "{o}/l.csv"],
     "not a label map: negative values"),
    ("an all-zero label map", ["landmarks", "--backend", "totalseg", "--labels", "{seg_zero}", "--out", "{o}/l.csv"],
     "seg_zero.nii.gz: an empty label map"),
    ("label ids x 1000", ["landmarks", "--backend", "totalseg", "--labels", "{seg_x1000}", "--out", "{o}/l.csv"],
     "none of its label ids"),
    ("heuristic without image", ["landmarks", "--backend", "heuristic", "--out", "{o}/l.csv"], "needs the CT image"),
    ("totalseg without labels", ["landmarks", "--backend", "totalseg", "--out", "{o}/l.csv"], "needs a label map"),
    ("unknown landmark names", ["landmarks", "--backend", "file", "--file", "{landmarks_unknown}", "--out",
                                "{o}/l.csv"], "['belly_button'] not in lesiontrack.vocabulary"),
    ("truncated CT for heuristic", ["landmarks", "--backend", "heuristic", "--image", "{trunc_gz}", "--out",
                                    "{o}/l.csv"], "truncated.nii.gz: damaged or truncated"),
    # conversion and pairs of own data
    ("one good and one bad volume", ["convert", "--dataset", "custom", "--inputs", "{ct}", "{trunc_gz}",
                                     "--images-dir", "{o}/images", "--table", "{o}/images.csv"],
     "truncated.nii.gz: damaged or truncated"),
    ("pattern matching nothing", ["convert", "--dataset", "custom", "--inputs", "{o}/*.nii.gz", "--images-dir",
                                  "{o}/images", "--table", "{o}/images.csv"], "matches no file"),
    ("pair outside its volume", ["pairs", "--dataset", "custom", "--pairs-csv", "{pairs_outside}", "--images",
                                 "{volumes}", "--out-dir", "{o}/custom"], "pairs_outside.csv: row 2"),
    ("pairs without a table", ["pairs", "--dataset", "custom", "--pairs-csv", "{pairs}", "--out-dir", "{o}/c"],
     "give --pairs-csv and one --images table"),
    # the rest
    ("embed without volumes", ["embed", "--checkpoint", "{ckpt_text}", "--out-dir", "{o}/e"],
     "give --images TABLE or --volumes"),
    ("embed with a damaged checkpoint", ["embed", "--checkpoint", "{ckpt_truncated}", "--volumes", "{ct}",
                                         "--out-dir", "{o}/e"], "truncated.pt: not a readable"),
    ("processes not dividing the batch", ["pretrain", "--volumes", "{ct}", "--validation", "{ct}", "--out-dir",
                                          "{o}/m", "--config", "{processes}"],
     "train.batch_size = 4: must be a multiple of train.processes = 3"),
    ("lesions without status", ["presence-calibrate", "--lesions", "{lesions_no_status}", "--volumes", "{volumes}",
                                "--out", "{o}/c.json"], "lesions_no_status.csv: missing column(s)"),
    ("presence with a folder that register did not write",
     ["presence", "--pairs", "{pairs}", "--lesions", "{pairs}", "--predictions", "{pairs}", "--method", "deformable",
      "--calibration", "{calibration_truncated}", "--registrations", "{a_folder}", "--out", "{o}/p.csv", "--report",
      "{o}/p.json"], "{a_folder}: no settings.json (not a lesiontrack register folder)"),
    ("table of a missing metrics file", ["table", "--dataset", "synthetic", "--method", "m", "{o}/none.json",
                                         "{o}/none.csv", "--reference", "m", "--out-dir", "{o}/t"], "none.json"),
]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Bad inputs made here from a generated CT (no reference data): hostile configs, targets that
    hold no scan, tables whose ids and radii cannot be meant."""
    d = tmp_path_factory.mktemp("made")
    ct = made_ct(d / "baseline.nii.gz")
    f = {"ct": ct, "follow_up": made_ct(d / "follow_up.nii.gz", (6.0, -3.0, 3.0))}
    image = sitk.ReadImage(str(ct))
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(np.asarray(image.GetSize()) / 2 - 0.5))
    inside = [[f"L{k}", *(centre + offset)] for k, offset in enumerate(([-20.0, 0, 0], [20.0, 0, 0]))]
    f["points"] = _points(d / "points.csv", inside)
    f["points_long_id"] = _points(d / "points_long_id.csv", [inside[0], ["x" * 300, *inside[1][1:]]])
    f["points_empty_id"] = d / "points_empty_id.csv"
    f["points_empty_id"].write_text(f"lesion_id,x,y,z\nL0,{inside[0][1]},{inside[0][2]},{inside[0][3]}\n"
                                    f",{inside[1][1]},{inside[1][2]},{inside[1][3]}\n")
    f["a_file"] = d / "a_file.txt"
    f["a_file"].write_text("a file where a folder is expected\n")
    f["yaml_bomb"] = d / "bomb.yaml"
    f["yaml_bomb"].write_text("".join([f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]\n" if k else
                                       'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                                       for k in range(6)]) + "preprocess:\n  window_hu: *l5\n")  # 9^6 lols
    f["yaml_duplicate"] = d / "duplicate.yaml"
    f["yaml_duplicate"].write_text("track:\n  context_mm: 24\n  refine_mm: 4\n  context_mm: 30\n")
    f["yaml_code"] = d / "code.yaml"  # a tag that would run code under yaml's unsafe loaders
    f["yaml_code"].write_text(f"track: !!python/object/apply:os.system [\"touch {d / 'code_ran'}\"]\n")
    f["yaml_nan"] = d / "nan.yaml"
    f["yaml_nan"].write_text("preprocess:\n  spacing_mm: .nan\n")
    f["yaml_huge"] = d / "huge.yaml"
    f["yaml_huge"].write_text("# " + "x" * (1 << 20) + "\n")
    # targets that hold no scan
    for name, array in (("target_air", np.full((40, 56, 56), -1024, np.int16)),
                        ("target_nan", np.full((40, 56, 56), np.nan, np.float32)),
                        ("target_tiny", np.zeros((8, 8, 8), np.int16))):
        f[name] = d / f"{name}{'.mha' if name == 'target_nan' else '.nii.gz'}"  # ITK's NIfTI writer drops NaN
        sitk.WriteImage(sitk.GetImageFromArray(array), str(f[name]))
    f["four_d"] = d / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(f["four_d"]))
    raw = bytearray(gzip.decompress(ct.read_bytes()))  # qform and sform both set; the sform moved 50 mm
    srow_x = list(struct.unpack("<4f", raw[280:296]))
    raw[280:296] = struct.pack("<4f", *srow_x[:3], srow_x[3] + 50.0)
    f["qform_sform"] = d / "qform_sform.nii"
    f["qform_sform"].write_bytes(bytes(raw))
    f["points_huge_radius"] = _points(d / "points_huge_radius.csv", [[*inside[0], 5.0], [*inside[1], 1e9]],
                                      ("lesion_id", "x", "y", "z", "radius_mm"))
    f["points_ragged"] = d / "points_ragged.csv"  # one field too many in every row
    f["points_ragged"].write_text("lesion_id,x,y,z\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},9\n" for r in inside))
    f["dls_too_many"] = d / "dls_too_many.json"
    f["dls_too_many"].write_text("[" + ", ".join(["{}"] * 100_001) + "]")
    import torch

    from lesiontrack.checkpoint import save_checkpoint
    from lesiontrack.data.nlst_synth import _write_dicom
    from lesiontrack.model import build_model

    model = {"width": 8, "embedding_dim": 8, "n_scales": 5, "norm": "group"}
    f["ckpt_other_network"] = save_checkpoint({"model": build_model(4, 8, norm="group").state_dict(),
                                               "config": {"model": model, "window_hu": [-1000, 400]}},
                                              d / "other_network.pt")
    f["ckpt_no_config"] = d / "no_config.pt"
    torch.save({"model": build_model(4, 8, norm="group").state_dict()}, f["ckpt_no_config"])
    for name, year in (("dicom_2001", 2), ("dicom_2000", 1)):
        f[name] = d / name
        _write_dicom(image, f[name], f"1.2.826.0.1.3680043.8.498.{year}", "100001", year)
    return f


MADE = ["track", "--source", "{ct}", "--target", "{follow_up}", "--points", "{points}", "--method", "identity",
        "--out", "{o}/tracked.csv"]


def _made(**replace: str) -> list[str]:
    return _own(MADE, **replace)


MADE_CASES = [
    # configs: untrusted YAML
    ("YAML bomb for the workflow", ["config", "{yaml_bomb}"], "bomb.yaml: line 1: YAML anchor &l0 refused"),
    ("YAML bomb in a tracking overlay", _made(config="{yaml_bomb}"), "bomb.yaml: line 1: YAML anchor &l0 refused"),
    ("YAML key given twice", ["config", "{yaml_duplicate}"],
     "duplicate.yaml: line 4: key 'context_mm' given twice in one mapping (first at line 2)"),
    ("YAML tag that runs code", ["config", "{yaml_code}"],
     "code.yaml: line 1: not valid YAML (could not determine a constructor for the tag"),
    ("YAML tag that runs code in a tracking overlay", _made(config="{yaml_code}"), "code.yaml: line 1: not valid"),
    ("YAML spacing .nan", ["config", "{yaml_nan}"], "preprocess.spacing_mm = nan: expected a finite number"),
    ("config file of a megabyte", ["config", "{yaml_huge}"], "huge.yaml: 1048579 bytes: not a config file"),
    # ids that cannot name a file
    ("lesion id of 300 characters", _made(points="{points_long_id}"),
     "points_long_id.csv: row 2: lesion_id = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...: 300 characters: "
     "too long to name a file"),
    ("empty lesion id", _made(points="{points_empty_id}"), "points_empty_id.csv: row 2: lesion_id = '': an empty id"),
    # targets and sources that hold no scan, or two geometries
    ("all-air target", _made(target="{target_air}"), "target_air.nii.gz: no body in the scan: 0.0% of its voxels"),
    ("all-air target with hybrid", _made(target="{target_air}", method="hybrid"), "target_air.nii.gz: no body"),
    ("all-NaN target", _made(target="{target_nan}"), "target_nan.mha: every voxel is NaN or infinite"),
    ("8x8x8 target", _made(target="{target_tiny}"), "target_tiny.nii.gz: size (8, 8, 8) voxels: a CT scan has at "
                                                    "least 32 x 32 voxels in a slice"),
    ("4-D source", _made(source="{four_d}"), "four_d.nii.gz: a 4D image (size (56, 56, 40, 2)), not a 3D volume"),
    ("qform and sform 50 mm apart", _made(source="{qform_sform}"),
     "qform_sform.nii: the NIfTI header's qform and sform disagree by 50.0 mm"),
    ("follow with an all-air follow-up", ["follow", "--scans", "{ct}", "{target_air}", "--points", "{points}",
                                          "--method", "identity", "--out", "{o}/h"], "target_air.nii.gz: no body"),
    # tables
    ("radius of 1e9 mm", _made(points="{points_huge_radius}"),
     "points_huge_radius.csv: row 2 (L1): radius_mm = 1e+09 does not fit in the source"),
    ("radius of 1e9 mm in follow", ["follow", "--scans", "{ct}", "{follow_up}", "--points", "{points_huge_radius}",
                                    "--method", "identity", "--out", "{o}/h"], "radius_mm = 1e+09 does not fit"),
    ("a field too many in every row", _made(points="{points_ragged}"), "points_ragged.csv: row 1 has 5 fields, the "
                                                                       "header 4"),
    ("DLS file of 100,001 entries", ["evaluate", "--predictions", "{dls_too_many}", "--out", "{o}/m.json"],
     "dls_too_many.json: 100001 entries: more than DeepLesion holds"),
    # checkpoints that are not this network's
    ("checkpoint of another network", _made(method="multiscale", checkpoint="{ckpt_other_network}"),
     "other_network.pt: its model weights do not fit the network its config describes"),
    ("checkpoint without its config", ["embed", "--checkpoint", "{ckpt_no_config}", "--volumes", "{ct}", "--out-dir",
                                       "{o}/e"], "no_config.pt: not a lesiontrack pretraining checkpoint: no config"),
    # follow: the scans' time order
    ("DICOM scans out of StudyDate order", ["follow", "--scans", "{dicom_2001}", "{dicom_2000}", "--points",
                                            "{points}", "--method", "identity", "--out", "{o}/h"],
     "scan 2 ({dicom_2000}) has StudyDate 20000102, before scan 1 ({dicom_2001}, StudyDate 20010102)"),
    ("one scan twice", ["follow", "--scans", "{ct}", "{follow_up}", "{ct}", "--points", "{points}", "--method",
                        "identity", "--out", "{o}/h"], "scan 3 ({ct}) is scan 1 ({ct}) again"),
]


def _snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _one_clear_line(files, tmp_path, capsys, monkeypatch, argv, culprit) -> None:
    """Exit 2, ``culprit`` named in one line, no traceback, nothing new in the output folder, the
    test's other folders or the inputs' folder, and every input file unchanged (by hash)."""
    out = tmp_path / "o"
    out.mkdir()
    (tmp_path / "a_folder").mkdir()
    monkeypatch.chdir(tmp_path)
    values = {**{k: str(v) for k, v in files.items()}, "o": str(out), "a_folder": str(tmp_path / "a_folder")}
    argv = [a.format(**values) for a in argv]
    culprit = culprit.format(**values)
    inputs_folder = files["a_file"].parent
    before = _snapshot(out), _snapshot(tmp_path / "a_folder"), _snapshot(inputs_folder)
    hashes = _hashes(inputs_folder)
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own usage errors
        code = exited.code
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert culprit in stderr, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "Nifti"))
             and "%|" not in line]  # progress bars
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines  # one line (argparse adds its usage)
    assert (_snapshot(out), _snapshot(tmp_path / "a_folder"), _snapshot(inputs_folder)) == before
    assert _hashes(inputs_folder) == hashes


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("argv", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line_and_leaves_nothing(files, tmp_path, capsys, monkeypatch, argv, culprit):
    _one_clear_line(files, tmp_path, capsys, monkeypatch, argv, culprit)


@pytest.mark.parametrize(("argv", "culprit"), [c[1:] for c in MADE_CASES], ids=[c[0] for c in MADE_CASES])
def test_bad_made_input_gives_one_clear_line_and_leaves_nothing(made, tmp_path, capsys, monkeypatch, argv, culprit):
    """The same contract on inputs this test makes (no reference data needed)."""
    _one_clear_line(made, tmp_path, capsys, monkeypatch, argv, culprit)


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    assert len({c[0] for c in MADE_CASES}) == len(MADE_CASES)


def test_the_real_files_still_work(files, tmp_path, capsys):
    """The good inputs beside the bad ones track and convert (the catalogue's files are not all bad)."""
    assert main([a.format(o=str(tmp_path), **{k: str(v) for k, v in files.items()}) for a in OWN]) == 0
    tracked = pd.read_csv(tmp_path / "tracked.csv")
    points = pd.read_csv(files["points"])
    np.testing.assert_allclose(tracked[["x", "y", "z"]].to_numpy(), points[["x", "y", "z"]].to_numpy(), atol=1e-4)
    assert main(["convert", "--dataset", "custom", "--inputs", str(files["ct"]), str(files["dicom"]), "--images-dir",
                 str(tmp_path / "images"), "--table", str(tmp_path / "images.csv")]) == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["made_ct.nii.gz", "made_ct_dicom.nii.gz"]
    shutil.rmtree(tmp_path / "images")


def test_a_workflow_job_with_bad_input_exits_1_with_one_line(files, tmp_path, capsys):
    """In the workflow (a rule's script inside lesiontrack.workflow.logged) bad input ends the job with
    exit status 1 and one line on the console and in the log, no traceback: an all-zero label map."""
    from lesiontrack.landmarks import volume_landmarks
    from lesiontrack.workflow import logged

    log = tmp_path / "landmarks.log"
    with pytest.raises(SystemExit) as exited, logged(log, "landmarks"):
        volume_landmarks("totalseg", files["ct"], files["seg_zero"])
    assert exited.value.code == 1
    stderr = capsys.readouterr().err
    assert stderr.strip() == f"lesiontrack rule landmarks: {files['seg_zero']}: an empty label map (every voxel 0)"
    text = log.read_text()
    assert "rule landmarks failed: " in text and "seg_zero.nii.gz" in text and "Traceback" not in text
