"""Time and memory per volume of the synthetic generator and of resampling (2 cores, this machine).

    python bench/synthetic_volumes.py [--subjects 4] [--out bench/out/synthetic_volumes.json]

Each measurement runs in a fresh process so that peak memory (max RSS) is that step's own.
Numbers quoted in the README come from this script with the default config.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path


def _subject(index: int, out_dir: str, queue) -> None:
    from lesiontrack.data import synthetic as sy
    from lesiontrack.io import write_image
    from lesiontrack.preprocess import resample_file

    cfg = sy.SyntheticConfig()
    start = time.perf_counter()
    subject = sy.plan_subject(cfg, index)
    rendered = sy.render_subject(cfg, subject)
    anatomy_s = time.perf_counter() - start
    scans = []
    for scan in subject.scans:
        t0 = time.perf_counter()
        image, label = sy.render_scan(rendered, scan)
        t1 = time.perf_counter()
        path = write_image(image, Path(out_dir) / f"{scan.image_id}.nii.gz")
        write_image(label, Path(out_dir) / f"{scan.image_id}_label.nii.gz")
        t2 = time.perf_counter()
        resample_file(path, Path(out_dir) / f"{scan.image_id}_2mm.nii.gz", 2.0)
        t3 = time.perf_counter()
        scans.append({"voxels": int(image.GetNumberOfPixels()), "render_s": t1 - t0, "write_s": t2 - t1,
                      "resample_s": t3 - t2})
    queue.put({"subject": subject.subject_id, "anatomy_s": anatomy_s, "scans": scans,
               "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--out", default="bench/out/synthetic_volumes.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.subjects):
            queue = mp.get_context("spawn").Queue()
            process = mp.get_context("spawn").Process(target=_subject, args=(index, tmp, queue))
            process.start()
            results.append(queue.get())
            process.join()
    scans = [s for r in results for s in r["scans"]]

    def summary(values):
        return {"mean": statistics.mean(values), "sd": statistics.pstdev(values), "max": max(values)}

    report = {
        "subjects": len(results), "volumes": len(scans),
        "anatomy_s_per_subject": summary([r["anatomy_s"] for r in results]),
        "render_s_per_volume": summary([s["render_s"] for s in scans]),
        "write_s_per_volume": summary([s["write_s"] for s in scans]),
        "resample_s_per_volume": summary([s["resample_s"] for s in scans]),
        "megavoxels_per_volume": summary([s["voxels"] / 1e6 for s in scans]),
        "max_rss_mb_per_subject_process": summary([r["max_rss_mb"] for r in results]),
        "per_subject": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key:32s} mean {value['mean']:8.2f}  sd {value['sd']:6.2f}  max {value['max']:8.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
