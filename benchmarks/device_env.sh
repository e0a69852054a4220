# Source this on a GPU machine without network, from the repository root:
#   . benchmarks/device_env.sh WHEELS
# WHEELS holds the peers and missing packages as files (the fla-core and lark wheels, the
# mamba-ssm sdist, whose Triton code runs without its CUDA extensions). Lays archdsl out as its
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
mkdir -p "$PKG/archdsl" && cp -r archdsl/. "$PKG/archdsl/" && cp -r kernels "$PKG/archdsl/kernels" \
    && cp -r grammar "$PKG/archdsl/grammar"
export PYTHONPATH="$PKG:$SITE:$PWD/benchmarks" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
