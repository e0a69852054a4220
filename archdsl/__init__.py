"""archdsl: a declarative language and compiler for hybrid and non-Transformer sequence models.

    import archdsl
    spec = archdsl.parse("4×(7×mamba2, attn(shared)), moe every 2")
    rep = archdsl.analyze(spec, seq_len=65536)
    model = archdsl.compile(spec, device="cuda", dtype=torch.bfloat16)

The core import is light: torch is imported only by compile / load / from_hf.
"""
import os as _os

# In a source checkout, grammar/ and kernels/ sit beside archdsl/, and an install maps them to archdsl.grammar and
# archdsl.kernels (setup.py). When this checkout's archdsl/ is the one imported (python -m archdsl from the checkout
# root shadows an installed copy; PYTHONPATH=.), the checkout's top directory is searched for subpackages too.
_top = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and \
        _os.path.isfile(_os.path.join(_top, "kernels", "__init__.py")) and \
        _os.path.isfile(_os.path.join(_top, "grammar", "layout.lark")):
    __path__.append(_top)
del _top

from .errors import ArchDSLError, check_path  # noqa: E402
from .spec import Spec, load_spec, parse  # noqa: E402
from .analysis import analyze, analyze_lengths  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ArchDSLError", "Spec", "parse", "load_spec", "analyze", "analyze_lengths", "compile", "load", "from_hf", "__version__"]


def compile(spec, **kwargs):  # noqa: A001 - the verb the field uses
    """Build the PyTorch model (ArchModel, in eval mode) of a spec: a Spec, YAML file or layout string.

    compile(spec, device="cpu", dtype=torch.float32, seed=0, cuda_graph=None, fuse=True, ssm_state_dtype=None);
    see archdsl.model.compile."""
    from .model import compile as _compile

    return _compile(spec, **kwargs)


def load(path, **kwargs):
    """Load a model saved with ArchModel.save(dir), with its weights and dtype: an ArchModel in eval mode.

    load(path, device="cpu", dtype=None, cuda_graph=None, fuse=True, ssm_state_dtype=None, seed=0): the last three
    are compile's; see archdsl.model.load."""
    from .model import load as _load

    return _load(check_path("load", path, "directory's path"), **kwargs)


def from_hf(path, **kwargs):
    """A local Hugging Face model directory (its config.json) as a Spec; with weights=True, (spec, model)
    holding its checkpoint's weights.

    from_hf(path, weights=False, device="cpu", dtype=None, name=None); see archdsl.convert.hf.from_hf."""
    from .convert.hf import from_hf as _from_hf

    return _from_hf(check_path("from_hf", path, "directory's path"), **kwargs)
