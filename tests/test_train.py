"""Pretraining pieces: exact patch correspondence, InfoNCE by hand, determinism and resume."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lesiontrack.checkpoint import read_checkpoint
from lesiontrack.train.loop import ModelConfig, TrainConfig, pretrain
from lesiontrack.train.loss import info_nce, info_nce_bank, sample_embeddings
from lesiontrack.train.patches import PatchConfig, sample_pair


def test_patch_correspondence_is_exact():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    volume = np.full((90, 180, 180), -100, np.int16)
    marker = np.array([45.0, 80.0, 70.0])  # centre of a 3-voxel bright cube
    volume[44:47, 79:82, 69:72] = 2000
    cfg = PatchConfig(noise_std=0.0)
    seen = 0
    for _ in range(4):
        pair = sample_pair(volume, np.array([[45, 80, 80]]), cfg, 50, rng)
        for view in (pair.view1, pair.view2):
            image = view.image[0].numpy()
            if image.max() < 0.5:
                continue
            found = np.argwhere(image > 0.5).mean(axis=0)
            predicted = view.from_volume(marker[None])[0]
            assert np.linalg.norm(found - predicted) < 1.0  # within one voxel
            seen += 1
        # positives: the same volume voxel seen from both views
        back1 = pair.positives1 @ pair.view1.to_volume[:3, :3].T + pair.view1.to_volume[:3, 3]
        back2 = pair.positives2 @ pair.view2.to_volume[:3, :3].T + pair.view2.to_volume[:3, 3]
        np.testing.assert_allclose(back1, back2, atol=1e-6)
        np.testing.assert_allclose(back1, pair.positives_volume, atol=1e-6)
    assert seen >= 4


def test_info_nce_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.6, 0.8]]])
    t = 0.5
    # row 1: pos 0.6, negs 0, -1 ; row 2: pos 1, negs 0, 0.8
    expected = -(math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0) + math.exp(-1 / t)))
                 + math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(0.8 / t))))
    assert info_nce(anchor, positive, negatives, t).item() == pytest.approx(expected, rel=1e-6)
    keep = torch.tensor([[True, False], [True, True]])  # drop one negative of row 1
    dropped = -(math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + 1.0))
                + math.log(math.exp(1 / t) / (math.exp(1 / t) + 1.0 + math.exp(0.8 / t))))
    assert info_nce(anchor, positive, negatives, t, keep).item() == pytest.approx(dropped, rel=1e-6)


def test_info_nce_bank_equals_gathered_negatives():
    """The bank form (similarities gathered by index) gives the same loss and gradients as
    gathering the negative embeddings themselves."""
    generator = torch.Generator().manual_seed(0)
    anchor = torch.nn.functional.normalize(torch.randn(20, 16, generator=generator), dim=1).requires_grad_()
    positive = torch.nn.functional.normalize(torch.randn(20, 16, generator=generator), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1).requires_grad_()
    index = torch.randint(0, 50, (20, 30), generator=generator)
    keep = torch.rand(20, 30, generator=generator) > 0.2
    gathered = info_nce(anchor, positive, bank[index], 0.1, keep)
    grads = torch.autograd.grad(gathered, [anchor, bank])
    banked = info_nce_bank(anchor, positive, bank, index, 0.1, keep)
    grads_bank = torch.autograd.grad(banked, [anchor, bank])
    assert banked.item() == pytest.approx(gathered.item(), rel=1e-5)
    for a, b in zip(grads, grads_bank, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sample_embeddings_hits_voxel_centres():
    embedding = torch.zeros(3, 4, 6, 6)
    embedding[0, 1, 2, 3] = 1.0  # coarse voxel (1, 2, 3) at stride (2, 2, 2) of an 8x12x12 input
    centre = torch.tensor([[2.5, 4.5, 6.5]])  # input-voxel centre of that coarse voxel
    assert sample_embeddings(embedding, centre, (8, 12, 12))[0, 0].item() == pytest.approx(1.0)


def _tiny_volumes(tmp_path, n=3):
    import SimpleITK as sitk

    from lesiontrack.io import write_image

    paths = []
    rng = np.random.default_rng(1)
    for k in range(n):
        base = rng.normal(0, 1, (40, 70, 70))
        from scipy import ndimage

        array = (ndimage.gaussian_filter(base, 3) * 2000).clip(-1000, 1000).astype(np.int16)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((4.0, 4.0, 4.0))
        paths.append(write_image(image, tmp_path / f"v{k}.nii.gz"))
    return paths


TINY = dict(batch_size=2, max_epochs=2, steps_per_epoch=2, patch_size=(16, 32, 32), n_pos=20, n_hard_neg=10,
            n_diverse_neg=10, n_candidates=100, validation_pairs=2, seed=3)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    volumes = _tiny_volumes(tmp_path)
    model = ModelConfig(width=4, embedding_dim=8)
    straight = pretrain(volumes[:2], volumes[2:], tmp_path / "a", TrainConfig(**TINY), model, progress=False)
    # batches drawn by two forked processes instead of one thread: the same stream
    again = pretrain(volumes[:2], volumes[2:], tmp_path / "b", TrainConfig(**TINY, sampler_workers=2), model,
                     progress=False)
    losses = [c for c in straight.columns if "loss" in c]
    pd.testing.assert_frame_equal(straight[losses], again[losses])
    # one epoch, stop, then resume for the second: the same losses as the straight run
    pretrain(volumes[:2], volumes[2:], tmp_path / "c", TrainConfig(**{**TINY, "max_epochs": 1}), model,
             progress=False)
    resumed = pretrain(volumes[:2], volumes[2:], tmp_path / "c", TrainConfig(**TINY), model, progress=False)
    pd.testing.assert_frame_equal(straight[losses], resumed[losses])
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt", "training_log.tsv", "progress.png"):
        assert (tmp_path / "c" / name).exists()
    state = read_checkpoint(tmp_path / "c" / "checkpoint_latest.pt")
    assert state["epoch"] == 1 and {"model", "optimizer", "config"} <= set(state)
    # the machine that trained it: the CPU kernels torch ran decide the weights' last digits
    assert state["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert state["machine"]["torch"] == torch.__version__ and state["machine"]["cpu"]


def _ddp_worker(rank: int, world: int, init_file: str, pairs_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lesiontrack.model import MultiScaleEmbedding
    from lesiontrack.train.loop import _pair_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MultiScaleEmbedding(width=4, embedding_dim=8)
    model.eval()  # normalisation layers in eval mode (ChannelNorm has no running statistics anyway)
    network = DistributedDataParallel(model)
    pairs = torch.load(pairs_file, weights_only=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = _pair_loss(network, [pairs[rank]], DDP_CFG, 4.0, np.random.default_rng(rank), torch.device("cpu"))
    loss.backward()
    gradients = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    torch.save({"gradients": gradients, "parameters": [p.detach().clone() for p in model.parameters()]},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


DDP_CFG = TrainConfig(batch_size=2, patch_size=(16, 32, 32), n_pos=20, n_hard_neg=10, n_diverse_neg=10,
                      n_candidates=100)


def test_ddp_gradient_equals_single_process_on_combined_batch(tmp_path):
    import torch.multiprocessing as mp

    from lesiontrack.model import MultiScaleEmbedding
    from lesiontrack.train.loop import _pair_loss

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    from scipy import ndimage

    volume = (ndimage.gaussian_filter(rng.normal(0, 1, (40, 70, 70)), 3) * 2000).clip(-1000, 1000).astype(np.int16)
    body = np.stack(np.nonzero(volume > -500), axis=1)[::50]
    patches = PatchConfig(patch_size=DDP_CFG.patch_size)
    pairs = [sample_pair(volume, body, patches, DDP_CFG.n_pos, rng) for _ in range(2)]
    torch.save(pairs, tmp_path / "pairs.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "pairs.pt"), str(tmp_path)), nprocs=2)

    torch.manual_seed(0)
    model = MultiScaleEmbedding(width=4, embedding_dim=8)
    model.eval()
    losses = [_pair_loss(model, [pair], DDP_CFG, 4.0, np.random.default_rng(k), torch.device("cpu"))[0]
              for k, pair in enumerate(pairs)]
    (sum(losses) / 2).backward()  # the mean over the combined batch of two pairs
    single = torch.cat([p.grad.flatten() for p in model.parameters()])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in ranks:
        distributed = torch.cat([g.flatten() for g in result["gradients"]])
        assert (distributed - single).norm() / single.norm() < 1e-5
    for a, b in zip(ranks[0]["parameters"], ranks[1]["parameters"], strict=True):
        assert torch.equal(a, b)


def test_pretrain_rule_launches_two_gloo_processes(tmp_path):
    """With ``train.processes: 2`` the pretrain rule's call (:func:`pretrain_distributed`) runs
    ``torchrun --standalone --nproc_per_node 2 -m lesiontrack.cli pretrain``: data-parallel on the
    CPU (gloo), as it would across the GPUs of a SLURM allocation."""
    from lesiontrack.config import load
    from lesiontrack.train.loop import pretrain_distributed

    volumes = _tiny_volumes(tmp_path)
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text("model: {width: 4, embedding_dim: 8}\n"
                       "train: {batch_size: 2, max_epochs: 1, steps_per_epoch: 2, patch_size: [16, 32, 32], "
                       "n_pos: 20, n_hard_neg: 10, n_diverse_neg: 10, n_candidates: 100, validation_pairs: 2, "
                       "processes: 2}\n")
    config = load([overlay])
    log = pretrain_distributed(volumes[:2], volumes[2:3], tmp_path / "ddp", config, config["train"]["processes"],
                               threads=2)
    assert list(log["epoch"]) == [0]
    state = read_checkpoint(tmp_path / "ddp" / "checkpoint_latest.pt")
    assert state["world_size"] == 2 and len(state["loss_rng"]) == 2  # one random stream per rank
    assert state["loss_rng"][0] != state["loss_rng"][1]


def test_landmark_positives_drawn_when_tables_exist(tmp_path):
    from lesiontrack.model import MultiScaleEmbedding
    from lesiontrack.train import loop

    volumes = _tiny_volumes(tmp_path)  # 40 x 70 x 70 voxels of 4 mm, origin 0
    landmark_dir = tmp_path / "landmarks"
    landmark_dir.mkdir()
    voxels = {}  # (volume, name) -> voxel (z, y, x)
    for k, path in enumerate(volumes):
        rows = []
        for j, name in enumerate(["carina", "liver_dome", "vertebra_T8"]):
            zyx = np.array([18.0 + k + j, 33.0 + 2 * j, 30.0 + k])
            voxels[(k, name)] = zyx
            rows.append({"name": name, "x": 4 * zyx[2], "y": 4 * zyx[1], "z": 4 * zyx[0], "confidence": 1.0})
        pd.DataFrame(rows).to_csv(landmark_dir / f"{loop.image_id_of(path)}.csv", index=False)
    cfg = TrainConfig(**{**TINY, "landmark_fraction": 0.1})
    patches = PatchConfig(patch_size=cfg.patch_size)
    torch.manual_seed(0)
    pairs = loop._sample_pairs(loop._Volumes(volumes, landmark_dir), 4, cfg, patches, np.random.default_rng(0))
    linked = [p for p in pairs if p.landmark_partner is not None]
    assert linked, "landmark positives are drawn when tables exist"
    for pair in linked:
        partner = pairs[pair.landmark_partner]
        assert len(pair.landmarks1) + len(pair.positives1) == cfg.n_pos
        here = pair.landmarks1 @ pair.view1.to_volume[:3, :3].T + pair.view1.to_volume[:3, 3]
        there = pair.landmarks_partner @ partner.view1.to_volume[:3, :3].T + partner.view1.to_volume[:3, 3]
        for a, b in zip(here, there, strict=True):  # the same name, in two different volumes
            match_a = [key for key, v in voxels.items() if np.allclose(v, a, atol=1e-3)]
            match_b = [key for key, v in voxels.items() if np.allclose(v, b, atol=1e-3)]
            assert match_a and match_b
            assert match_a[0][1] == match_b[0][1] and match_a[0][0] != match_b[0][0]
    model = MultiScaleEmbedding(width=4, embedding_dim=8)
    loss, per_scale = loop._pair_loss(model, pairs, cfg, 4.0, np.random.default_rng(1), torch.device("cpu"))
    assert torch.isfinite(loss) and len(per_scale) == 5
    without = loop._sample_pairs(loop._Volumes(volumes), 4, cfg, patches, np.random.default_rng(0))
    assert all(p.landmark_partner is None for p in without)


@pytest.mark.parametrize("landmarks", [False, True])
def test_far_negatives_come_from_the_same_volume_elsewhere(tmp_path, landmarks):
    """With ``far_negatives``, each pair has a sibling pair from the same volume; its far
    candidates are excluded near the positive in volume coordinates, never by view coordinates."""
    from lesiontrack.model import MultiScaleEmbedding
    from lesiontrack.train import loop
    from lesiontrack.train.loss import far_source

    volumes = _tiny_volumes(tmp_path)
    landmark_dir = None
    if landmarks:
        landmark_dir = tmp_path / "landmarks"
        landmark_dir.mkdir()
        for k, path in enumerate(volumes):
            pd.DataFrame([{"name": name, "x": 4 * (30.0 + k), "y": 4 * (33.0 + 2 * j), "z": 4 * (18.0 + j),
                           "confidence": 1.0} for j, name in enumerate(["carina", "liver_dome", "vertebra_T8"])]
                         ).to_csv(landmark_dir / f"{loop.image_id_of(path)}.csv", index=False)
    cfg = TrainConfig(**{**TINY, "far_negatives": 200, "landmark_fraction": 0.1 if landmarks else 0.0})
    patches = PatchConfig(patch_size=cfg.patch_size)
    torch.manual_seed(0)
    pairs = loop._sample_pairs(loop._Volumes(volumes, landmark_dir), 4, cfg, patches, np.random.default_rng(0))
    assert len(pairs) == 4
    for k, pair in enumerate(pairs):
        assert pair.sibling is not None and pairs[pair.sibling].sibling == k and pair.sibling != k
        assert pairs[pair.sibling].volume_index == pair.volume_index
        if pair.landmark_partner is not None:  # partners stay linked to the other volume
            assert pairs[pair.landmark_partner].volume_index != pair.volume_index
    if landmarks:
        assert any(p.landmark_partner is not None for p in pairs)
    pair, sibling = pairs[0], pairs[pairs[0].sibling]
    maps = [torch.zeros(1, 2, 2, 2)] * 5
    source = far_source(maps, sibling.view2.valid, sibling.view2.to_volume, pair.positives_volume, 4.0, 8.0, 200,
                        np.random.default_rng(0))
    in_volume = source.candidates @ sibling.view2.to_volume[:3, :3].T + sibling.view2.to_volume[:3, 3]
    distance = np.linalg.norm(pair.positives_volume[:, None] - in_volume[None], axis=-1) * 4.0
    np.testing.assert_array_equal(source.excluded, distance < 8.0)
    assert not source.same_view
    model = MultiScaleEmbedding(width=4, embedding_dim=8)
    loss, per_scale = loop._pair_loss(model, pairs, cfg, 4.0, np.random.default_rng(1), torch.device("cpu"))
    assert torch.isfinite(loss) and len(per_scale) == 5


def test_training_volumes_are_memory_mapped_and_refreshed(tmp_path):
    """Pretraining reads volumes through a memory-mapped cache (no volume in memory): the same
    voxels and geometry as the NIfTI, and a changed source is cached again."""
    import os

    from lesiontrack.io import write_image
    from lesiontrack.train.loop import body_voxels, load_volume, volume_cache

    path = _tiny_volumes(tmp_path, n=1)[0]
    array, geometry, body = volume_cache(path, tmp_path / "cache")
    assert isinstance(array, np.memmap) and not array.flags.writeable
    expected, expected_geometry = load_volume(path)
    np.testing.assert_array_equal(np.asarray(array), expected)
    np.testing.assert_array_equal(body, body_voxels(expected))
    assert geometry == expected_geometry
    first = (tmp_path / "cache" / "v0.npy").stat().st_mtime_ns
    volume_cache(path, tmp_path / "cache")  # unchanged source: the entry is reused
    assert (tmp_path / "cache" / "v0.npy").stat().st_mtime_ns == first
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.full((40, 70, 70), 100, np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    write_image(image, path)
    os.utime(path, ns=(first + 10**9, first + 10**9))
    array, _, _ = volume_cache(path, tmp_path / "cache")
    assert (np.asarray(array) == 100).all()


def test_initial_model_is_the_network_pretraining_starts_from(tmp_path):
    """``initial_model`` (the untrained reference) rebuilds the very weights pretraining starts
    from: a run whose optimiser cannot move them (lr 0) saves exactly those weights."""
    from lesiontrack.track.embed import initial_model

    volumes = _tiny_volumes(tmp_path)
    pretrain(volumes[:2], volumes[2:], tmp_path / "a", TrainConfig(**{**TINY, "max_epochs": 1, "lr": 0.0}),
             ModelConfig(width=4, embedding_dim=8), progress=False)
    state = read_checkpoint(tmp_path / "a" / "checkpoint_latest.pt")
    rebuilt = initial_model(state["config"]).state_dict()
    assert rebuilt.keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        torch.testing.assert_close(rebuilt[name], tensor, rtol=0, atol=0, msg=name)
    other = initial_model({**state["config"], "train": {**state["config"]["train"], "seed": 4}}).state_dict()
    assert any(not torch.equal(other[n], t) for n, t in state["model"].items())


def test_smoke_training_finds_held_out_landmarks_by_nearest_embedding(smoke_run):
    """After the smoke training (configs/smoke.yaml), the ground-truth landmarks of the held-out
    (test) subject's baseline scan, matched in its follow-ups by the summed multi-scale similarity
    alone (the paper's nearest-embedding matching: no context points, no intensity refinement),
    have a median error of at most 2 voxels and at most half that of the untrained network."""
    from lesiontrack.io import read_image, read_table
    from lesiontrack.track.embed import embed_volume, initial_model, load_model
    from lesiontrack.track.match import VolumeMaps, landmark_errors_mm

    torch.set_num_threads(2)
    results = smoke_run / "results"
    trained, config = load_model(results / "models" / "default" / "checkpoint_best.pt")
    images = read_table(results / "synthetic" / "images.csv")
    test = images[images["split"] == "test"].sort_values(["subject_id", "timepoint"])
    assert len(test) >= 2
    truth = {i: read_table(results / "synthetic" / "truth" / f"{i}.csv").set_index("name") for i in test["image_id"]}
    volumes = {i: read_image(results / "synthetic" / "resampled" / f"{i}.nii.gz") for i in test["image_id"]}
    voxel_mm = float(config["spacing_mm"])
    median = {}
    for label, network in (("trained", trained), ("untrained", initial_model(config))):
        maps = {i: VolumeMaps(embed_volume(network, v, tuple(config["window_hu"]))) for i, v in volumes.items()}
        errors = []
        for _, scans in test.groupby("subject_id"):
            baseline, *followups = scans["image_id"]
            errors += [landmark_errors_mm(maps[baseline], maps[f], truth[baseline], truth[f]) for f in followups]
        errors = np.concatenate(errors)
        assert len(errors) >= 30
        median[label] = float(np.median(errors)) / voxel_mm
    assert median["trained"] <= 2.0, median
    assert median["trained"] <= 0.5 * median["untrained"], median


def test_a_thin_slab_is_padded_and_its_padding_never_valid():
    """A DLS-like slab (13 slices at 5 mm: 33 slices at 2 mm, narrower than two shifted default crops
    of 42 + 2 x 8 slices) gives exact pairs whose valid voxels all lie in the real data."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    volume = np.full((33, 150, 150), -100, np.int16)
    marker = np.array([16.0, 70.0, 75.0])
    volume[15:18, 69:72, 74:77] = 2000
    cfg = PatchConfig(noise_std=0.0)  # the default patch size, (32, 96, 96)
    for _ in range(3):
        pair = sample_pair(volume, np.array([[16, 75, 75]]), cfg, 50, rng)
        for view in (pair.view1, pair.view2):
            voxels = np.argwhere(view.valid)
            in_volume = voxels @ view.to_volume[:3, :3].T + view.to_volume[:3, 3]
            assert in_volume.min(0)[0] >= -0.5 and in_volume.max(0)[0] <= 32.5  # never the padded slices
            found = np.argwhere(view.image[0].numpy() > 0.5).mean(axis=0)
            np.testing.assert_allclose(found, view.from_volume(marker[None])[0], atol=1.0)
        back2 = pair.positives2 @ pair.view2.to_volume[:3, :3].T + pair.view2.to_volume[:3, 3]
        np.testing.assert_allclose(back2, pair.positives_volume, atol=1e-6)
        assert (pair.positives_volume[:, 0] >= -0.5).all() and (pair.positives_volume[:, 0] <= 32.5).all()


def test_pretrain_runs_on_the_real_ct_at_2mm_with_the_default_patch_size(test_data, tmp_path):
    """The real abdominal CT (300 mm field of view, 90 mm long) resampled to 2 mm is smaller than two
    shifted default crops along z: pretraining pads it and trains."""
    from lesiontrack.preprocess import resample_file

    ct = resample_file(test_data / "totalseg" / "example_ct_sm.nii.gz", tmp_path / "ct_2mm.nii.gz", 2.0)
    defaults = TrainConfig()
    cfg = TrainConfig(**{**TINY, "patch_size": defaults.patch_size, "max_epochs": 1})
    log = pretrain([ct], [ct], tmp_path / "model", cfg, ModelConfig(width=4, embedding_dim=8), progress=False)
    assert cfg.patch_size == (32, 96, 96) and len(log) == 1 and np.isfinite(log.filter(like="loss")).all().all()
    assert (tmp_path / "model" / "checkpoint_best.pt").exists()
