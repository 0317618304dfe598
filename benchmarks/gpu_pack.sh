#!/usr/bin/env bash
# Packs what benchmarks/gpu_all.sh needs on a lent GPU machine into one folder to carry, .gpu-carry/:
#   site.tar.xz  av 19.0.2, decord 0.6.0, PyNvVideoCodec 2.2.4, webdataset 1.0.2, braceexpand 0.1.7: the cp312
#                manylinux x86-64 wheels unzipped into one folder (what pip would install), less what no run
#                needs, packed with `tar -cf - . | xz -9` (the device unpacks it into /tmp/site, ~15 s);
#   media/       pipeline_gpu.py's JPEG and H.264 shards (`--prepare`), so the device needs no time to make them.
# Run it here, in the repository root (it needs pip's registry and, for the shards, a Python with PyAV):
#   bash benchmarks/gpu_pack.sh
# A device call carries the working tree and the ignored paths it names, 64 MiB in all: the script checks the sum.
set -euo pipefail
CARRY=${GPU_CARRY:-.gpu-carry}
PIP_PY=${PIP_PY:-python3}  # any Python: --python-version picks the wheels for the device's 3.12
PY=${PY:-.venv/bin/python}  # the project's Python (PyAV, the repository's imports) for the shards
LIMIT=$((64 * 1024 * 1024))
PACKAGES=(av==19.0.2 decord==0.6.0 pynvvideocodec==2.2.4 webdataset==1.0.2 braceexpand==0.1.7)

# keep everything made here out of git (the carry names it; .gitignore stays as it is)
for d in "/$CARRY/" /gpu-out/; do
  grep -qxF "$d" .git/info/exclude 2> /dev/null || echo "$d" >> .git/info/exclude
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# each platform tag must be named: decord 0.6.0 exists only as a manylinux2010 wheel, which pip does not take for
# manylinux_2_28 alone
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux2010; do platforms+=(--platform "${tag}_x86_64"); done
"$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$work/wheels" "${PACKAGES[@]}"
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$work/site"
done
# not needed by any run: PyNvVideoCodec's samples, benchmarks and bundled FFmpeg source (its .data folder), and
# its module for CUDA 12 drivers (the machines run CUDA 13 drivers, which load PyNvVideoCodec_130); the wheel's
# top-level `benchmarks/` would also shadow this repository's on PYTHONPATH
rm -rf "$work/site/samples" "$work/site/benchmarks" "$work/site"/pynvvideocodec-*.data \
  "$work/site"/PyNvVideoCodec/PyNvVideoCodec_121.*.so
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +

mkdir -p "$CARRY"
(cd "$work/site" && tar -cf - . | xz -9) > "$CARRY/site.tar.xz"
"$PY" benchmarks/pipeline_gpu.py --prepare --workdir "$CARRY/media"

archive=$(stat -c %s "$CARRY/site.tar.xz")
carried=$(du -sb "$CARRY" | cut -f1)
# the files a call copies: tracked and untracked-not-ignored ones (a tracked file deleted here is not there)
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2> /dev/null || true) |
  awk '{s += $1} END {print s + 0}')
echo "site.tar.xz $((archive / 1024)) KiB; $CARRY in all $((carried / 1024)) KiB; working tree $((tree / 1024)) KiB"
echo "carry: [\"$CARRY\"]: $(((carried + tree) / 1024)) KiB of the $((LIMIT / 1024)) KiB a device call takes"
if [ $((carried + tree)) -gt "$LIMIT" ]; then
  echo "too large for one device call: make fewer media (pipeline_gpu.py --distinct)" >&2
  exit 1
fi
