"""Label-propagation memory and speed on a DAVIS-sized synthetic video.

Run: python benchmarks/propagation.py [--frames 80] [--preset crw] [--threads N] [--device cpu] [--baseline 2]
     python benchmarks/propagation.py --compare   (J&F and PCK of a random-init ViT-S/16 vs raw pixels)

The video is 854x480 with 2 moving objects; its features are a ViT-S/8-sized grid (60 x 107 x 384) made per
frame (the object's embedding plus noise), so the figures measure propagation, upsampling to 854x480, argmax
and J, not an encoder. With the CRW preset every target frame sees 20 previous frames plus the first.
Prints peak resident memory (ru_maxrss) and frames/s, then (with --baseline N) times N frames of a plain
query-chunked all-pairs computation beside it, checks both agree, and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmssl.eval.labels import grid_to_mask, mask_to_grid  # noqa: E402
from mmssl.eval.metrics import region_iou  # noqa: E402
from mmssl.eval.presets import PropagationSettings, apply_settings, preset  # noqa: E402
from mmssl.eval.propagation import propagate  # noqa: E402

H, W, GRID, DIM = 480, 854, (60, 107), 384


def labels_at(t: int) -> np.ndarray:
    """Label ids (480, 854): two ellipses crossing the frame in opposite directions."""
    yy, xx = np.mgrid[0:H, 0:W]
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[((xx - (200 + 4 * t)) / 110) ** 2 + ((yy - 240) / 150) ** 2 <= 1] = 1
    lab[((xx - (650 - 4 * t)) / 90) ** 2 + ((yy - 200 - 40 * np.sin(t / 10)) / 120) ** 2 <= 1] = 2
    return lab


def features_at(t: int, embed: torch.Tensor) -> torch.Tensor:
    """Features (384, 60, 107): each cell carries the embedding of its majority label plus noise."""
    grid = mask_to_grid(labels_at(t), [0, 1, 2], GRID).argmax(0)  # (60, 107)
    noise = torch.randn(DIM, *GRID, generator=torch.Generator().manual_seed(t))
    return embed[grid].permute(2, 0, 1) + 0.6 * noise  # (60, 107, 384) -> (384, 60, 107)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux reports KiB


def all_pairs(feats: list[torch.Tensor], first: torch.Tensor, s: PropagationSettings, n: int) -> list[torch.Tensor]:
    """Baseline: every target cell against every context cell, 512 target cells at a time (CRW semantics)."""
    h, w = GRID
    f = [F.normalize(x, dim=0).reshape(DIM, -1).T for x in feats]  # (h*w, D)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yx = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).float()  # (h*w, 2)
    labels = {0: first.reshape(first.shape[0], -1).T}  # (C, h, w) -> (h*w, C)
    out = []
    for t in range(1, n + 1):
        ctx = [0] + [max(j, 0) for j in range(t - s.context, t)]
        keys = torch.cat([f[j] for j in ctx])  # (T*h*w, D)
        labs = torch.cat([labels[j] for j in ctx])  # (T*h*w, C)
        pred = []
        for q0 in range(0, h * w, 512):
            aff = f[t][q0:q0 + 512] @ keys.T  # (512, T*h*w)
            far = torch.cdist(yx[q0:q0 + 512], yx) >= s.radius  # (512, h*w)
            aff[:, h * w:].view(aff.shape[0], len(ctx) - 1, -1).masked_fill_(far[:, None], float("-inf"))  # (q, T, h*w)
            top, idx = aff.topk(s.topk, dim=1)
            pred.append((torch.softmax(top / s.temperature, 1)[..., None] * labs[idx]).sum(1))
        labels[t] = torch.cat(pred)
        out.append(labels[t].T.reshape(-1, h, w))  # (h*w, C) -> (C, h, w)
    return out


def compare(preset_name: str) -> None:
    """J&F (synthetic DAVIS layout) and PCK (synthetic JHMDB layout) of a random-init ViT-S/16 and of raw pixels."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))
    from synthetic import write_davis, write_jhmdb

    from mmssl.eval.datasets import read_davis, read_jhmdb
    from mmssl.eval.encoders import PixelFeatures, dense_features, load_encoder
    from mmssl.eval.evaluate import evaluate_propagation

    from recipes.synthetic import write_dataset

    vit = {"_component_": "mmssl.models.TokenEncoder", "name": "vit_small_patch16_224", "modality": "image"}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        davis = read_davis(write_davis(root / "davis", ("a", "b"), frames=20, height=240, width=320))
        shapes = read_davis(write_dataset(root / "shapes", train=0, val=4, progress=False)[1])
        jhmdb = read_jhmdb(write_jhmdb(root / "jhmdb", frames=20))
        print(f"A: striped discs, 2 sequences x 20 frames, 320x240 (tests/eval/synthetic.py); B: recipes.synthetic "
              f"held-out shapes with occlusion, 4 x {len(shapes[0].frames)} frames, 96x96; JHMDB layout: 1 x 20 "
              f"frames, 128x96, 15 joints; preset {preset_name} (its DAVIS / JHMDB input sizes)")
        for name, feats in (("random-init ViT-S/16", dense_features(load_encoder(None, vit))),
                            ("raw pixels (stride 8)", PixelFeatures(8))):
            out = root / "out" / name.split()[0]
            r_a = evaluate_propagation("davis", davis, feats, preset(preset_name, "davis"), out / "a", verbose=False)
            r_b = evaluate_propagation("davis", shapes, feats, preset(preset_name, "davis"), out / "b", verbose=False)
            r_j = evaluate_propagation("jhmdb", jhmdb, feats, preset(preset_name, "jhmdb"), out / "j", verbose=False)
            print(f"  {name:<22} A: J&F {100 * r_a.summary['J&F']:5.1f} (J {100 * r_a.summary['J_mean']:5.1f}, "
                  f"F {100 * r_a.summary['F_mean']:5.1f})  B: J&F {100 * r_b.summary['J&F']:5.1f} "
                  f"(J {100 * r_b.summary['J_mean']:5.1f}, F {100 * r_b.summary['F_mean']:5.1f})  "
                  f"PCK@0.1 {r_j.summary['PCK@0.1']:5.1f}  PCK@0.2 {r_j.summary['PCK@0.2']:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--preset", default="crw", choices=["crw", "dino", "siammae"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", type=int, default=0, help="frames of the all-pairs baseline to time beside")
    parser.add_argument("--compare", action="store_true", help="print J&F / PCK of random-init ViT vs raw pixels")
    parser.add_argument("overrides", nargs="*", help="propagation settings, e.g. tile=12")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        compare(args.preset)
        return
    s = apply_settings(preset(args.preset, "davis"), args.overrides)
    embed = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0))
    device = torch.device(args.device)
    first = mask_to_grid(labels_at(0), [0, 1, 2], GRID).to(device)
    print(f"{W}x{H}, {args.frames} frames, 2 objects, grid {GRID[0]}x{GRID[1]}x{DIM}, preset {args.preset} "
          f"(context {s.context} + first, radius {s.radius}, top-{s.topk}, tile {s.tile}), "
          f"{torch.get_num_threads()} threads, {device}")
    print(f"memory before propagation: {peak_rss_gb():.2f} GB peak RSS")
    stream = (features_at(t, embed).to(device) for t in range(args.frames))
    ious, scoring = [], 0.0
    start = time.perf_counter()
    for t, soft in enumerate(propagate(stream, first, s), start=1):
        pred = grid_to_mask(soft, (H, W), s.norm_mask).cpu().numpy()  # upsample to 854x480 and argmax
        tick = time.perf_counter()
        ious.append([region_iou(labels_at(t) == k, pred == k) for k in (1, 2)])
        scoring += time.perf_counter() - tick
        if t % 10 == 0:
            print(f"  frame {t}: {t / (time.perf_counter() - start - scoring):.2f} frames/s, "
                  f"peak RSS {peak_rss_gb():.2f} GB", flush=True)
    n = args.frames - 1
    elapsed = time.perf_counter() - start - scoring
    all_pairs_gb = GRID[0] * GRID[1] * (s.context + 1) * GRID[0] * GRID[1] * 4 / 1024 ** 3
    print(f"peak RSS {peak_rss_gb():.2f} GB (limit 4 GB); {n / elapsed:.2f} frames/s (propagation, upsampling and "
          f"argmax; feature synthesis included, scoring not); mean J {np.mean(ious):.3f}")
    print(f"one frame's all-pairs affinity would be {all_pairs_gb:.2f} GB; the video's {all_pairs_gb * n:.0f} GB")
    if args.baseline:
        m = min(args.baseline, n)
        feats = [features_at(t, embed) for t in range(m + 1)]
        t0 = time.perf_counter()
        ours = list(propagate(iter(feats), first.cpu(), s))
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = all_pairs(feats, first.cpu(), s, m) if args.preset != "dino" else None
        t_ref = time.perf_counter() - t0
        if ref is None:
            print("baseline written for CRW semantics (unrestricted first frame); skipped for dino")
            return
        diff = max(float((a - b).abs().max()) for a, b in zip(ours, ref))
        print(f"baseline all-pairs on {m} frames: {m / t_ref:.3f} frames/s vs {m / t_ours:.3f} "
              f"({t_ref / t_ours:.1f}x faster), max label difference {diff:.2e}")


if __name__ == "__main__":
    main()
