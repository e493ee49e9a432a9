# Sourced by the benchmarks/run_*.sh device scripts (run from the repo root): the device machine has no network,
# so the project's carried wheels (.whl, .whl_ros; git-ignored) are installed offline into /tmp/site when
# present; the repo and /tmp/site go on PYTHONPATH. Without wheels (a machine that has the packages) only the
# repo is added.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl $(compgen -G ".whl_ros/*.whl") 2>&1 | tail -2
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
