import numpy as np
from PIL import Image

from mmssl.eval.baselines import copy_first_frame
from mmssl.eval.datasets import read_davis
from recipes.synthetic import SyntheticVideos, write_dataset


def _sequence(root, name, masks):
    (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
    (root / "Annotations" / "480p" / name).mkdir(parents=True)
    for t, m in enumerate(masks):
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg")
        Image.fromarray(m.astype(np.uint8), mode="L").save(root / "Annotations" / "480p" / name / f"{t:05d}.png")


def test_copy_is_perfect_on_a_static_sequence_and_worse_when_things_move(tmp_path) -> None:
    still = np.zeros((16, 16), np.uint8)
    still[4:10, 4:10] = 1
    _sequence(tmp_path, "still", [still] * 5)
    assert copy_first_frame(read_davis(tmp_path)) == {"J&F": 1.0, "J_mean": 1.0, "F_mean": 1.0}
    wide = np.zeros((16, 32), np.uint8)
    wide[4:10, 4:10] = 1
    moved = [np.roll(wide, 8 * t, axis=1) for t in range(5)]  # frames 1..3 do not overlap frame 0 at all
    _sequence(tmp_path / "m", "move", moved)
    scores = copy_first_frame(read_davis(tmp_path / "m"))
    assert scores["J_mean"] == 0.0


def test_copy_on_synthetic_videos_is_between(tmp_path) -> None:
    _, davis = write_dataset(tmp_path, train=0, val=2, cfg=SyntheticVideos(size=48, frames=10), progress=False)
    scores = copy_first_frame(read_davis(davis))
    assert 0.05 < scores["J&F"] < 0.95  # measured 0.35: objects drift, so copying is neither useless nor perfect
