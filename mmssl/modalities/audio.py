"""Log-mel spectrograms: 1024 frames x 128 mel bins, 16x16 patches, a 64x8 grid (Audio-MAE).

Audio-MAE (after AST) normalises with (fbank - mean) / (2 * std) using dataset statistics; the factor 2 is folded
into `std` here so that `Modality.normalize` stays one formula. Other datasets: `dataclasses.replace(AUDIO, ...)`.
"""

from mmssl.modalities.spec import Modality

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

AUDIO = Modality(name="audio", patch=(16, 16), size=(1024, 128), channels=1, key="flac",
                 mean=(AUDIOSET_MEAN,), std=(2 * AUDIOSET_STD,))
