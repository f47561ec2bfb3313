# Sourced by the one-call device scripts (vae_dtype_ab.sh, vae_units_ab.sh), from the repo root:
# wheels carried in .whl/ go onto PYTHONPATH, and the synthetic checkpoint of $preset is made once.
# Needs: preset. Sets: ckpt, PYTHONPATH, PYTHONUNBUFFERED. A checkpoint that cannot be made ends the run.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ckpt=/tmp/ckpt/$preset
[ -f "$ckpt/config.json" ] || python3 -m voxcpm_engine.tools.synthetic --preset "$preset" "$ckpt" --seed 0 >/dev/null || exit 1
