"""The pictures of a layout: what the strip figure shows (labels, outlines, size), and DOT / Mermaid text
that a renderer accepts. Behaviour only: the figure's texts, patches and size, never pixels."""
import math
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import archdsl  # noqa: E402
from archdsl.draw import (GROUP_COLORS, KIND_COLORS, MAX_ROWS, Fold, draw, fold_layers, font_with,  # noqa: E402
                          strip_figure, strip_rows, to_dot, to_mermaid)
from archdsl.errors import ArchDSLError  # noqa: E402
from archdsl.graph import layers  # noqa: E402

SPECS = os.path.join(os.path.dirname(__file__), "..", "specs")
WEIRD = ('3×mamba2, attn(shared="g\\"<1>; end|x"), 2×(mamba2, swa_2), attn(shared="g\\"<1>; end|x"), '
         "zamba(shared='a very long group name', lora=8) at 1 5")


def spec_file(name):
    return archdsl.load_spec(os.path.join(SPECS, f"{name}.yaml"))


def weird():
    return archdsl.parse(WEIRD, name='we"ird <name> {a}; end [1] ×', d_model=64, vocab_size=100,
                         blocks={"swa_2": {"kind": "attn", "window": 16}})


@pytest.fixture
def figure():
    import matplotlib.pyplot as plt

    figs = []

    def make(spec):
        figs.append(strip_figure(spec))
        return figs[-1]

    yield make
    for f in figs:
        plt.close(f)


def texts(fig):
    ax = fig.axes[0]
    return [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().get_texts()]


def rectangles(fig):
    from matplotlib.patches import Rectangle

    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def rgb(color):
    from matplotlib.colors import to_rgb

    return [255 * c for c in to_rgb(color)]


def distance(a, b):
    return sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b))) ** 0.5


def test_shared_outline_stands_out_from_every_fill(figure):
    for g in GROUP_COLORS:
        for kind, c in KIND_COLORS.items():
            assert distance(g, c) > 100, (g, kind)
    fig = figure(spec_file("demo-zamba"))  # a shared zamba block: red fill
    shared = [p for p in rectangles(fig) if p.get_linewidth() > 1]
    assert len(shared) == 3
    for p in shared:
        assert distance(p.get_edgecolor(), p.get_facecolor()) > 100


def test_shared_group_names_readable(figure):
    names = texts(figure(spec_file("demo-zamba")))
    assert names.count("zamba") >= 3 and "zamba(lora=16)" in names  # three blocks' group, the legend as written
    names = texts(figure(weird()))
    assert "shared: a very long group name" in names
    assert "a ver…" in names  # a long name is cut with a mark, not silently


def test_deep_periodic_layout_folds(figure):
    spec = archdsl.parse("2000×mamba2, attn every 8, moe every 2")
    width, drawn = strip_rows(layers(spec.graph))
    assert width == 32 and drawn == [(0, 62), (1984, 1)]
    fig = figure(spec)
    assert fig.get_size_inches()[1] < 5
    assert "× 62\nlayers 0–1983" in texts(fig)
    assert len(rectangles(fig)) == 48 + 24  # the 48 layers drawn: their mixers, and MoE on the odd ones


def test_rows_follow_the_period():
    width, drawn = strip_rows(layers(archdsl.parse("12×(6×mamba2, attn)").graph))
    assert width == 28 and drawn == [(0, 3)]
    width, drawn = strip_rows(layers(spec_file("mamba-2.8b").graph))
    assert width == 32 and drawn == [(0, 1), (32, 1)]  # two alike rows stay two rows
    width, drawn = strip_rows(layers(archdsl.parse("mamba").graph))
    assert width == 1 and drawn == [(0, 1)]


def test_every_layer_drawn_in_published_specs(figure):
    for name in ("jamba-v0.1", "nemotron-h-8b", "zamba2-2.7b-released", "mamba-2.8b"):
        spec = spec_file(name)
        n = len(layers(spec.graph))
        numbers = {int(t) for t in texts(figure(spec)) if t.isdigit()}
        assert 0 in numbers and max(numbers) >= n - 4, name
        columns = {(round(p.get_x()), math.ceil(-p.get_y() / 1.55 - 1e-9)) for p in rectangles(figure(spec))}
        assert len(columns) == n, name


def test_too_many_distinct_rows_is_an_error_and_no_file(tmp_path):
    at = " ".join(str(i) for i in range(3, 2000, 37))
    spec = archdsl.parse(f"2000×mamba, attn at {at}")
    out = tmp_path / "x.png"
    with pytest.raises(ArchDSLError, match=f"at most {MAX_ROWS}"):
        draw(spec, str(out))
    assert os.listdir(tmp_path) == []


def _column_width(fig):
    fig.canvas.draw()
    return rectangles(fig)[0].get_window_extent().width


def test_a_layer_keeps_its_shape(figure):
    one = _column_width(figure(archdsl.parse("mamba")))
    eight = _column_width(figure(archdsl.parse("8×mamba")))
    many = _column_width(figure(spec_file("mamba-2.8b")))
    assert abs(one - eight) < 0.1 * eight and abs(many - eight) < 0.1 * eight


def test_alias_is_told_apart(figure):
    fig = figure(weird())
    assert "swa_2 (attn)" in texts(fig) and "attn" in texts(fig)
    attn = [p for p in rectangles(fig) if distance(p.get_facecolor(), KIND_COLORS["attn"]) < 1]
    assert {bool(p.get_hatch()) for p in attn} == {True, False}


def test_inline_arguments_are_told_apart(figure):
    """A windowed attention is not drawn as a global one: rows that differ in a block's arguments alone are not
    folded together, and each config has its hatch and legend entry as written; arguments that change nothing
    (heads=8 is attn's default at d_model 256) are the plain block."""
    spec = archdsl.parse("3×(31×mamba2, attn(window=512)), 3×(31×mamba2, attn(heads=8)), attn", d_model=256,
                         vocab_size=1000)
    assert strip_rows(layers(spec.graph)) == (32, [(0, 3), (96, 3), (192, 1)])
    fig = figure(spec)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["mamba2", "attn(window=512)", "attn"]
    attn = [p for p in rectangles(fig) if distance(p.get_facecolor(), KIND_COLORS["attn"]) < 1]
    assert [bool(p.get_hatch()) for p in attn] == [True, False, False]


def test_numbers_under_the_lowest_band(figure):
    fig = figure(spec_file("demo-zamba"))  # no FFN: the numbers sit under the mixers, not under empty space
    ys = [t.get_position()[1] for t in fig.axes[0].texts if t.get_text() == "0"]
    assert ys and ys[0] > 0.1


def test_the_title_names_the_bands_drawn(figure):
    """The key to the bands only where there are two or three, naming those drawn."""
    assert figure(spec_file("demo-zamba")).axes[0].get_title() == "demo-zamba: 12 layers  (top: inject · middle: mixer)"
    assert figure(archdsl.parse("4×mamba2", d_model=64)).axes[0].get_title() == "model: 4 layers"
    title = figure(spec_file("demo-jamba")).axes[0].get_title()
    assert title.endswith("(middle: mixer · bottom: FFN)"), title


# --- text outputs --------------------------------------------------------------------------------------
_DOT_ID = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")'
_DOT_VALUE = r'(?:[A-Za-z_][A-Za-z0-9_.,]*|"(?:[^"\\]|\\.)*")'
_DOT_ATTRS = rf"(?: \[{_DOT_ID}={_DOT_VALUE}(?:, {_DOT_ID}={_DOT_VALUE})*\])?"
_DOT_LINE = re.compile(rf"(?:{_DOT_ID}{_DOT_ATTRS}|{_DOT_ID} -> {_DOT_ID}{_DOT_ATTRS}|rankdir=LR|node{_DOT_ATTRS});")
_DOT_BOX = re.compile(r'subgraph cluster_F\d+_\d+ \{'
                      r'|label="(?:[^"\\]|\\.)*"; style="rounded,dashed"; color="#888888"; fontname=Helvetica;')


def check_nested(lines, close, line, box):
    """Each line a statement we write (`line`, or `box`: a box's opening and its attributes), indented by its
    depth; boxes opened and closed (`close`) in step."""
    depth = 1
    for text in lines:
        body = text.lstrip(" ")
        assert text[:len(text) - len(body)] == "  " * (depth - (body == close)), text
        if body == close:
            depth -= 1
            assert depth >= 1, text
        else:
            assert line.fullmatch(body) or box.fullmatch(body), text
            depth += body.startswith("subgraph")
    assert depth == 1


def check_dot(text):
    lines = text.splitlines()
    assert re.fullmatch(rf"digraph {_DOT_ID} \{{", lines[0]) and lines[-1] == "}"
    check_nested(lines[1:-1], "}", _DOT_LINE, _DOT_BOX)


_MMD_LABEL = r'"[^"<>`#;]*(?:#\d+;[^"<>`#;]*)*"'  # quoted; anything odd as an entity code
_MMD_ID = r"(?:embed|norm|head|L\d+)"  # none a Mermaid keyword (`end`, `graph`, ...)
_MMD_LINE = re.compile(rf"(?:{_MMD_ID}\[{_MMD_LABEL}\]|{_MMD_ID} (?:-->|-\.->) {_MMD_ID}"
                       rf"|L\d+ -\.-\|{_MMD_LABEL}\| L\d+|classDef [a-z0-9]+ fill:#[0-9A-F]{{6}},color:#(?:000000|FFFFFF)"
                       rf"|class L\d+(?:,L\d+)* [a-z0-9]+|direction LR)")
_MMD_BOX = re.compile(rf"subgraph F\d+_\d+\[{_MMD_LABEL}\]")


def check_mermaid(text):
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    check_nested(lines[1:], "end", _MMD_LINE, _MMD_BOX)


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(SPECS) if f.endswith(".yaml")))
def test_text_outputs_parse(name):
    spec = spec_file(name)
    check_dot(to_dot(spec))
    check_mermaid(to_mermaid(spec))


def test_text_outputs_with_odd_names():
    spec = weird()
    dot, mmd = to_dot(spec), to_mermaid(spec)
    check_dot(dot)
    check_mermaid(mmd)
    assert 'digraph "we\\"ird <name> {a}; end [1] ×" {' in dot
    assert "zamba(lora=8) [a very long group name] + swa_2" in dot  # block arguments are shown
    assert "g#34;#60;1#62;#59; end#124;x" in mmd


def test_dot_groups_have_their_own_colours():
    dot = to_dot(spec_file("zamba2-2.7b-released"))
    colours = {label: set(re.findall(rf'color="(#\w+)", constraint=false, label="{label}"', dot)) for label in "ab"}
    assert len(colours["a"]) == 1 and len(colours["b"]) == 1 and colours["a"] != colours["b"]


def test_mermaid_says_tied_like_dot():
    spec = spec_file("demo-zamba")
    assert spec.tie_embeddings
    assert 'head["LM head (tied)"]' in to_mermaid(spec) and "LM head (tied)" in to_dot(spec)
    assert 'head["LM head"]' in to_mermaid(spec_file("jamba-v0.1"))


def test_mermaid_past_its_limits_is_an_error_and_no_file(tmp_path):
    """Mermaid draws at most 500 links (maxEdges) and 50 000 characters (maxTextSize) by default; past them it
    shows an error box where the chart should be. Folded, 600 layers of one kind are one node."""
    check_mermaid(to_mermaid(archdsl.parse("490×mamba2"), every_layer=True))
    out = tmp_path / "g.mmd"
    with pytest.raises(ArchDSLError, match="at most 500 links"):
        draw(archdsl.parse("600×mamba2"), str(out), every_layer=True)
    assert os.listdir(tmp_path) == []
    draw(archdsl.parse("600×mamba2"), str(tmp_path / "g.dot"), every_layer=True)  # DOT has no such limit
    check_dot((tmp_path / "g.dot").read_text())
    draw(archdsl.parse("600×mamba2"), str(out))
    assert '  L0["0#8211;599: mamba2 × 600"]' in out.read_text().splitlines()


def expand(items):
    """The layers a chart's items stand for, in order."""
    out = []
    for it in items:
        if isinstance(it, Fold):
            block = expand(it.items)
            assert block == list(range(it.first, it.first + it.period))
            out += [i + r * it.period for r in range(it.repeats) for i in block]
        else:
            out.append(it)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("aab"), max_size=60), st.integers(2, 4))
def test_folding_loses_no_layer(sigs, fold):
    """The chart's items stand for every layer once, in order; a fold's blocks are alike, `fold` of them at least;
    nothing that repeats `fold` times in a row from where an item starts is left unfolded."""
    items = fold_layers(sigs, 0, len(sigs), fold)
    assert expand(items) == list(range(len(sigs)))

    def check(items, hi):
        for it in items:
            if isinstance(it, Fold):
                assert it.repeats >= fold and it.period >= 1
                block = sigs[it.first:it.first + it.period]
                assert all(sigs[it.first + r * it.period:it.first + (r + 1) * it.period] == block
                           for r in range(it.repeats))
                check(it.items, it.first + it.period)
            else:
                assert sigs[it:min(it + fold, hi)] != [sigs[it]] * fold
    check(items, len(sigs))


def test_charts_fold_the_layout_blocks(tmp_path):
    """`4×(7×mamba2, attn(shared))` is one box × 4 holding a mamba2 node × 7 and the attn node; every link ends
    at a node drawn; --every-layer draws the 32."""
    spec = archdsl.parse("4×(7×mamba2, attn(shared))")
    mmd, dot = to_mermaid(spec), to_dot(spec)
    check_mermaid(mmd)
    check_dot(dot)
    assert re.findall(r'(L\d+)\["([^"]*)"\]', mmd) == [("L0", "0#8211;6: mamba2 × 7"), ("L7", "7: attn [attn]")]
    assert 'subgraph F0_8["layers 0#8211;31 × 4"]' in mmd
    assert 'label="layers 0–31 × 4"' in dot and 'L0 [label="0–6: mamba2 × 7"' in dot
    assert re.findall(r"^  (\w+) --> (\w+)$", mmd, re.M) == [("embed", "L0"), ("L0", "L7"), ("L7", "norm"),
                                                             ("norm", "head")]
    full = to_mermaid(spec, every_layer=True)
    check_mermaid(full)
    assert len(re.findall(r"L\d+\[", full)) == 32 and "subgraph" not in full
    assert full.count('-.-|"attn"|') == 3  # the shared attention's four layers, linked in turn


@pytest.mark.parametrize("name", ["zamba2-2.7b-released", "jamba-v0.1", "demo-zamba"])
def test_folded_links_end_at_drawn_nodes(name):
    """Embedding reads and shared groups of layers drawn once link the layer drawn for them, each link once."""
    for text, node, link in ((to_mermaid(spec_file(name)), r"^\s+(L\d+)\[", r"(L\d+|embed|norm|head)"),
                             (to_dot(spec_file(name)), r"^\s+(L\d+) \[", r"(L\d+|embed|norm|head)")):
        drawn = set(re.findall(node, text, re.M)) | {"embed", "norm", "head"}
        links = re.findall(rf"^  {link} (?:-->|-\.->|-\.-\|[^|]*\||->) {link}", text, re.M)
        assert links and {n for pair in links for n in pair} <= drawn
        assert len(links) == len(set(links))


def test_text_reads_on_its_fill(figure):
    """White text on mlp's light tan or mamba2's light blue was all but invisible (Mermaid, the group names)."""
    def contrast(a, b):
        def lum(c):
            return sum(w * (v / 255) ** 2.2 for w, v in zip((0.2126, 0.7152, 0.0722), rgb(c))) + 0.05
        return max(lum(a), lum(b)) / min(lum(a), lum(b))

    mmd = to_mermaid(archdsl.parse("mamba, mamba2, rwkv6, rwkv4, s4d, attn, mlp, moe, cmix"))
    styles = re.findall(r"classDef (\w+) fill:(#\w+),color:(#\w+)", mmd)
    assert {k for k, _, _ in styles} == set(KIND_COLORS) - {"zamba"}  # zamba rides on a mixer's layer
    for kind, fill, ink in styles:
        assert contrast(fill, ink) > 4, kind
    dot = to_dot(archdsl.parse("mamba2, mlp"))
    for fill, ink in re.findall(r'fillcolor="(#\w+)", fontcolor="(#\w+)"', dot):
        assert contrast(fill, ink) > 4, fill
    fig = figure(archdsl.parse("2×mamba2(shared=x), 2×mamba(shared=y)", d_model=64))
    labels = [t for t in fig.axes[0].texts if t.get_text() in ("x", "y")]
    assert len(labels) == 4
    for t in labels:
        fill = KIND_COLORS["mamba2" if t.get_text() == "x" else "mamba"]
        assert contrast(fill, t.get_color()) > 4


@pytest.mark.parametrize("name", ["arc ⌒", "混合模型"])
def test_characters_the_default_font_lacks(name, tmp_path):
    """A name's characters the default font (DejaVu Sans) lacks are drawn by an installed font that has them
    (matplotlib's DejaVu Sans Mono has ⌒); where none has them, one ArchDSLWarning names them, not matplotlib's
    warning a glyph."""
    import warnings

    from archdsl.errors import ArchDSLWarning
    spec = archdsl.parse('4×mamba2, attn(shared="g")', name=name, d_model=64, vocab_size=100)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        draw(spec, str(tmp_path / "x.png"))
    ours = [w for w in seen if issubclass(w.category, ArchDSLWarning)]
    assert not [w for w in seen if "missing from font" in str(w.message)]
    if all(font_with(c) for c in name.replace(" ", "")):
        assert ours == []
    else:
        assert len(ours) == 1 and "no installed font has 4 characters" in str(ours[0].message)
        assert all(c in str(ours[0].message) for c in name)
    assert (tmp_path / "x.png").stat().st_size > 0


def test_draw_takes_what_compile_takes_and_names_a_bad_path(tmp_path):
    """A layout string (or YAML file) as compile and analyze take it: it was AttributeError. A path that is not a
    str, holds a NUL byte, or runs through a file: each named, nothing written."""
    from archdsl.draw import to_dot, to_mermaid

    draw("mamba, attn", str(tmp_path / "a.dot"))
    assert (tmp_path / "a.dot").read_text() == to_dot(archdsl.parse("mamba, attn"))
    assert to_mermaid("mamba, attn") == to_mermaid(archdsl.parse("mamba, attn"))
    (tmp_path / "f.py").write_text("x")
    for path, why in [(None, "draw: expected a file's path .*got NoneType"), (b"x.svg", "got bytes"),
                      (str(tmp_path / "x\0.svg"), "holds a NUL byte"),
                      (str(tmp_path / "f.py" / "x.svg"), "f.py is a file, not a directory")]:
        with pytest.raises(ArchDSLError, match=why):
            draw("mamba", path)
    assert sorted(os.listdir(tmp_path)) == ["a.dot", "f.py"]


@pytest.mark.parametrize("lens, data, why", [
    ([1024, 4096], {"a": [1]}, r"data\['a'\] must be 2 byte counts"),
    ([1024], {"a": [[1, 1]]}, r"data\['a'\] must be 1 byte count \(ints >= 0\)"),
    ([0], {"a": [1]}, r"lens must be context lengths, ints >= 1, got \[0\]"),
    ("1k", {"a": [1]}, "lens must be context lengths"),
    ([1024], None, "data must map each spec's name to its cache bytes, got None"),
    ([1024], {"a": [-1]}, r"data\['a'\] must be 1 byte count"),
])
def test_plot_memory_names_a_bad_series(tmp_path, lens, data, why):
    from archdsl.draw import plot_memory

    with pytest.raises(ArchDSLError, match=why):
        plot_memory(lens, data, str(tmp_path / "m.svg"))
    assert os.listdir(tmp_path) == []


def test_plot_memory_draws_counts_past_int64(tmp_path):
    """10^30 bytes (an absurd spec's cache) was numpy's TypeError in log2 of an object array."""
    from archdsl.draw import plot_memory

    plot_memory([1024, 4096], {"a": [10**30, 10**31]}, str(tmp_path / "m.svg"))
    assert (tmp_path / "m.svg").stat().st_size > 0


def test_a_picture_is_written_through_the_atomic_writer(tmp_path):
    """save_figure renders in memory and writes with write_atomic: its temporaries follow the one naming a killed
    writer's leftovers are removed by (they were `.NAME.tmp-PID.png`, never cleaned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archdsl.draw import save_figure

    stale = tmp_path / ".p.png.tmp-00000000-999999999-x"  # another machine's: left alone
    stale.write_bytes(b"")
    fig = plt.figure()
    save_figure(fig, str(tmp_path / "sub" / ".." / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.png.tmp-00000000-999999999-x", "p.png"]


@pytest.mark.parametrize("call, message", [
    (lambda p: draw("2×mamba2", str(p / "a.dot"), every_layer="no"), "draw: every_layer must be True or False"),
    (lambda p: to_dot("2×mamba2", every_layer=1), "to_dot: every_layer must be True or False, got 1"),
    (lambda p: to_mermaid("2×mamba2", every_layer=None), "to_mermaid: every_layer must be True or False, got None"),
])
def test_every_layer_is_a_bool(tmp_path, call, message):  # 'no' was truthy: every layer drawn
    with pytest.raises(ArchDSLError, match=message):
        call(tmp_path)
    assert not list(tmp_path.iterdir())


def test_save_figure_names_a_bad_figure_or_path_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    from archdsl.draw import save_figure

    with pytest.raises(ArchDSLError, match="save_figure: fig must be a matplotlib Figure, got 3"):  # AttributeError
        save_figure(3, str(tmp_path / "a.png"))
    for path, message in ((tmp_path / "a.xyz", "use one of .svg, .png, .pdf"),  # a ValueError from matplotlib
                          (tmp_path / "a", "use one of .svg, .png, .pdf"),  # written as a PNG named `a`
                          (5, "save_figure: expected a file's path")):  # TypeError
        fig = plt.figure()
        with pytest.raises(ArchDSLError, match=message):
            save_figure(fig, path if isinstance(path, int) else str(path))
        assert not plt.fignum_exists(fig.number)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("char", ["\n", "\x1b", "\u2028"])
def test_a_figure_path_with_a_control_character_is_refused_naming_the_argument(tmp_path, char):
    import matplotlib.pyplot as plt

    from archdsl.draw import plot_memory, save_figure

    path = str(tmp_path / f"out{char}.png")
    fig = plt.figure()
    for call, where in ((lambda: save_figure(fig, path), "save_figure"), (lambda: draw("2×mamba2", path), "draw"),
                        (lambda: plot_memory([1024], {"a": [1]}, path), "plot_memory")):
        with pytest.raises(ArchDSLError) as e:
            call()
        assert str(e.value) == f"{where}: path: the path {path!r} holds the control character {char!r}; give one " \
                               f"without"
    assert not plt.fignum_exists(fig.number) and list(tmp_path.iterdir()) == []
