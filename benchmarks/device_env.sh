# Source this on a GPU machine without network, from the repository root:
#   . benchmarks/device_env.sh WHEELS
# WHEELS holds the peers and missing packages as files (the fla-core and lark wheels, the
# mamba-ssm sdist, whose Triton code runs without its CUDA extensions, and optionally the
# causal-conv1d sdist, whose CUDA kernels benchmarks/mamba_cuda.py builds). Lays archdsl out as its
# wheel does (grammar/ and kernels/ inside the package) in a temporary folder and puts that and
# the peers on PYTHONPATH; PYTHONSAFEPATH keeps the checkout's own archdsl/ off sys.path, in
# torchrun's workers too.
_WHEELS=${1:-.whl}
SITE=$(mktemp -d)
PKG=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$SITE" "$_WHEELS"/*.whl
tar xzf "$_WHEELS"/mamba_ssm-*.tar.gz -C "$SITE" --strip-components=1 --wildcards '*/mamba_ssm/*'
: > "$SITE/mamba_ssm/__init__.py"  # its own __init__ imports CUDA extensions that are not built
# its CUDA selective scan's sources, which benchmarks/mamba_cuda.py builds (the forward alone) as a peer
tar xzf "$_WHEELS"/mamba_ssm-*.tar.gz -C "$SITE" --strip-components=1 --wildcards '*/csrc/selective_scan/*'
export MAMBA_SSM_CSRC="$SITE/csrc/selective_scan" TORCH_EXTENSIONS_DIR="$SITE/torch_extensions"
# causal-conv1d's sdist, if given: its Python package, and its CUDA sources for mamba_cuda.py's build
for _cc in "$_WHEELS"/causal_conv1d-*.tar.gz; do
    [ -f "$_cc" ] || continue
    mkdir -p "$SITE/causal_conv1d_sdist" && tar xzf "$_cc" -C "$SITE/causal_conv1d_sdist" --strip-components=1
    cp -r "$SITE/causal_conv1d_sdist/causal_conv1d" "$SITE/"
    export CAUSAL_CONV1D_CSRC="$SITE/causal_conv1d_sdist/csrc"
done
mkdir -p "$PKG/archdsl" && cp -r archdsl/. "$PKG/archdsl/" && cp -r kernels "$PKG/archdsl/kernels" \
    && cp -r grammar "$PKG/archdsl/grammar"
export PYTHONPATH="$PKG:$SITE:$PWD/benchmarks" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
