# Sourced by the GPU scripts (bench/gpu.sh, bench/gpu_multi.sh): a host without uproot / awkward / mplhep / hist and with no package
# registry (the device machines here) gets them from the cp312 wheels in .whl/ (git-ignored; docs/gpu.md, "The GPU
# scripts"); torch-scatter / torch-cluster are optional (pure-torch fallback). graphsr runs from the checkout.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ! "$PY" -c "import uproot, awkward, mplhep, hist" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/graphsr-site .whl/*.whl
  export PYTHONPATH=/tmp/graphsr-site${PYTHONPATH:+:$PYTHONPATH}
fi
# fail now, not after the training: reports need the plotting packages too
"$PY" -c "import uproot, awkward, mplhep, hist" || { echo "bench/gpu_env.sh: graphsr's requirements are missing here;" \
  "put their cp312 wheels in .whl/ (docs/gpu.md, 'The GPU scripts')" >&2; exit 1; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
