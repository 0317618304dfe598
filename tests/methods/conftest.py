"""Makes the helpers of this folder (synthetic data, the learning-test loop) importable by the tests here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
