"""The pictures of a layout: what the strip figure shows (labels, outlines, size), and DOT / Mermaid text
that a renderer accepts. Behaviour only: the figure's texts, patches and size, never pixels."""
import math
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import archdsl  # noqa: E402
from archdsl.draw import (GROUP_COLORS, HATCHES, KIND_COLORS, MAX_ROWS, MAX_SERIES, Fold, draw,  # noqa: E402
                          fold_layers, font_with, group_marks, memory_figure, plot_memory, series_styles,
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
    fills = {p.get_xy(): p for p in rectangles(fig) if p.get_fill()}
    assert len(shared) == 3
    for p in shared:  # the outline, over the fill of its box
        assert not p.get_fill() and distance(p.get_edgecolor(), fills[p.get_xy()].get_facecolor()) > 100


def test_a_hatch_is_white_whatever_group_outlines_its_box(figure):
    """matplotlib draws a hatch in its patch's edge colour: group a's boxes were hatched black, b's yellow, over
    their marks, where the legend showed white. Each box is its fill with a white hatch, under its group's outline."""
    fig = figure(archdsl.parse("4×(mamba2, attn(shared=a, window=512), attn(shared=b, kv_heads=2), attn)",
                               d_model=64, vocab_size=100))
    fills = [p for p in rectangles(fig) if p.get_fill()]
    hatched = [p for p in fills if p.get_hatch()]
    assert len(fills) == 16 and len(hatched) == 8
    assert all(distance(p.get_edgecolor(), "white") == 0 for p in fills)
    outlines = [p for p in rectangles(fig) if not p.get_fill()]
    assert sorted(p.get_xy() for p in outlines) == sorted(p.get_xy() for p in hatched)
    assert {distance(p.get_edgecolor(), "white") > 100 for p in outlines} == {True}


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
_MMD_LINE = re.compile(rf"(?:{_MMD_ID}\[{_MMD_LABEL}\]|{_MMD_ID} (?:-->|-\.->|-->\|{_MMD_LABEL}\|) {_MMD_ID}"
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


# --- the review of the drawing commands ----------------------------------------------------------------
@pytest.fixture
def memfig():
    """memory_figure's figures, closed after the test; each drawn (its texts laid out) before it is returned."""
    import matplotlib.pyplot as plt

    figs = []

    def make(*args, **kwargs):
        figs.append(memory_figure(*args, **kwargs))
        figs[-1].canvas.draw()
        return figs[-1]

    yield make
    for f in figs:
        plt.close(f)


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_memory_lines_run_left_to_right(memfig):
    """--seq-lens 512k,1,64k,8k joined the points in that order: each line zig-zagged over the log axis. Each
    line is drawn over the lengths sorted, its counts with them."""
    lens = [512 * 1024, 1, 64 * 1024, 8 * 1024]
    fig = memfig(lens, {"a": [40, 10, 30, 20], "b": [5, 6, 7, 8]})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    for line, ys in zip(lines, ([10, 20, 30, 40], [6, 8, 7, 5])):
        assert list(line.get_xdata()) == sorted(lens) and list(line.get_ydata()) == ys


def overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_memory_within_an_octave_labels_both_ends(memfig):
    """Counts of 39.3 and 47.3 MiB lie between two powers of 2, where the ticks are: the y axis had no label."""
    mib = 2**20
    for counts in ([39.31 * mib, 47.31 * mib], [30 * mib, 40 * mib], [40 * mib] * 2):
        fig = memfig([1536, 2048], {"a": [int(c) for c in counts]})
        ax = fig.axes[0]
        lo, hi = ax.get_ylim()
        shown = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= v <= hi]
        assert len(shown) == len(set(counts)) and all(shown), shown
    ax = memfig([1024, 2**20], {"a": [mib, 1024 * mib]}).axes[0]  # octaves apart: powers of 2, as before
    assert {v for v in ax.get_yticks() if ax.get_ylim()[0] <= v <= ax.get_ylim()[1]} <= {2.0 ** k for k in range(64)}


@pytest.mark.parametrize("lens", [
    [1024 * k for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16)] + [100000, 100001],
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [10**9, 10**9 + 1, 10**9 + 2],
    [1024, 524288],
])
def test_memory_length_labels_never_overlap(memfig, lens):
    """Every length had its label: 6k7k8k9k10k12k ran together, and 100000 over 100001 read 1000001. Labels that
    would touch are left blank (their ticks stay); the first and the last are always shown."""
    fig = memfig(lens, {"a": [n * 1000 for n in lens]})
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert all(not overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    texts = [t.get_text() for t in ax.get_xticklabels()]
    assert len(texts) == len(set(lens)) and texts[0] and texts[-1]
    if len(lens) == 2:
        assert all(texts)


def test_memory_series_are_told_apart_and_the_legend_hides_nothing(memfig):
    """21 specs (specs/*.yaml): matplotlib's cycle of ten colours, one marker, gave three lines one blue; the legend
    sat on the data and the 512k tick. Each series has its own (colour, marker, line style), up to MAX_SERIES; the
    legend lies beside the axes, clear of the data and the ticks."""
    styles = series_styles(MAX_SERIES)
    assert len(set(styles)) == MAX_SERIES
    lens = [1024, 8192, 65536, 524288]
    data = {f"spec-{i}": [(i + 1) * n for n in lens] for i in range(21)}
    fig = memfig(lens, data)
    ax = fig.axes[0]
    drawn = [(line.get_color(), line.get_marker(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(drawn) == 21 and len(set(drawn)) == 21
    legend = ax.get_legend()
    assert legend_texts(fig) == list(data)
    box = legend.get_window_extent()
    renderer = fig.canvas.get_renderer()
    assert not overlap(box, ax.get_window_extent())
    for tick in ax.get_xticklabels() + ax.get_yticklabels():
        assert not overlap(box, tick.get_window_extent(renderer)), tick.get_text()
    assert [(h.get_color(), h.get_marker(), h.get_linestyle()) for h in legend.legend_handles] == drawn
    with pytest.raises(ArchDSLError, match=f"at most {MAX_SERIES}"):
        memory_figure([1], {str(i): [1] for i in range(MAX_SERIES + 1)})


def png_size(path):
    head = open(path, "rb").read(24)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.parametrize("name", ["_baseline", "my-very-long-experiment-name-" * 5, "n" * 200, "x" * 3000])
def test_memory_names_as_given_and_no_warning(tmp_path, name):
    """A name starting with `_` left the legend empty (matplotlib ignores such labels) with its UserWarning on
    stderr; a long one squeezed the axes to a sliver (from 200 characters, tight_layout's warning; at 3000 a PNG
    30 000 pixels wide). The name is shown as given, a long one wrapped onto two lines and cut in the middle;
    no warning of any kind."""
    import warnings

    out = tmp_path / "m.png"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fig = memory_figure([1024, 8192], {name: [1, 2]})
        fig.canvas.draw()
        (label,) = legend_texts(fig)
        plot_memory([1024, 8192], {name: [1, 2]}, str(out))
    assert [str(w.message) for w in seen] == []
    if len(name) <= 32:
        assert label == name
    else:
        rows = label.split("\n")
        assert len(rows) == 2 and all(len(r) <= 32 for r in rows)
        start, end = "".join(rows).split("…") if len(name) > 64 else ("".join(rows), "")
        assert name.startswith(start) and name.endswith(end) and len(start) > 10
    width, height = png_size(out)
    assert width < 1600 and height < 800, (width, height)


def test_memory_legend_keeps_names_apart_when_cut(memfig):
    """Two long names alike but in their middles cut to one text: each gets its place, [k]."""
    a, b = "a" * 50 + "1" + "z" * 50, "a" * 50 + "2" + "z" * 50
    assert legend_texts(memfig([1], {a: [1], b: [1], "short": [0]})) == [
        f"{'a' * 32}\n{'a' * 10}…{'z' * 21} [1]", f"{'a' * 32}\n{'a' * 10}…{'z' * 21} [2]", "short (no cache)"]


def test_memory_label_names_the_dtypes(memfig):
    """The y label named the dtype as typed (`half`) and never the SSM states', whose bytes double from bfloat16 to
    float32: canonical names, and the SSM states' where they are not the cache's dtype."""
    label = lambda **kw: memfig([1024], {"a": [1]}, **kw).axes[0].get_ylabel()  # noqa: E731
    assert label(dtype="half") == "inference cache\n(batch 1, float16, SSM states float32)"
    assert label(dtype="BF16", ssm_state_dtype="bf16") == "inference cache\n(batch 1, bfloat16)"
    assert label(batch=3, dtype="fp32") == "inference cache\n(batch 3, float32)"
    assert label(dtype="float64") == "inference cache\n(batch 1, float64)"
    assert label(dtype="fp8", ssm_state_dtype="float16") == "inference cache\n(batch 1, float8, SSM states float16)"


def test_memory_label_names_no_ssm_states_without_them(memfig):
    """`memory "4×mlp" "2×attn" -o z.png` labelled its y axis "SSM states float32", though no spec had an SSM."""
    label = lambda **kw: memfig([1024], {"a": [1]}, **kw).axes[0].get_ylabel()  # noqa: E731
    assert label(ssm_states=False) == "inference cache\n(batch 1, bfloat16)"
    assert label(ssm_state_dtype="float16", ssm_states=False) == "inference cache\n(batch 1, bfloat16)"
    assert label(ssm_states=True) == "inference cache\n(batch 1, bfloat16, SSM states float32)"


@pytest.mark.parametrize("path, why", [
    (".svg", "cannot write '.svg': '.svg' is a suffix alone; give a name before it, as in 'layout.svg'"),
    ("d/.PNG", "cannot write 'd/.PNG': '.PNG' is a suffix alone; give a name before it, as in 'd/layout.PNG'"),
    ("zz.svg/", "cannot write 'zz.svg/': the trailing '/' makes it a directory's name; give a file's, as in 'zz.svg'"),
    ("new/", "cannot write 'new/': the trailing '/' makes it a directory's name; give a file's, as in "
             "'new/layout.svg'"),
])
def test_a_suffix_alone_or_a_trailing_slash_is_told_as_such(tmp_path, monkeypatch, path, why):
    """`-o .svg` and `-o zz.svg/` were told "use one of .svg, .png, ...": the suffix they already had."""
    from archdsl.draw import check_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArchDSLError) as e:
        check_path(path)
    assert str(e.value) == why
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, why", [
    ({"data": {1: [1], "1": [2]}}, r"two of data's keys are '1' as str\(\) writes them"),
    ({"data": {"a": [10**400]}}, r"data\['a'\] holds a count past what a plot can draw"),
    ({"batch": -5}, "batch must be an int >= 1, got -5"),
    ({"batch": True}, "batch must be an int >= 1, got True"),
    ({"dtype": "whatever"}, "plot_memory: unknown dtype 'whatever'"),
    ({"ssm_state_dtype": "float8"}, "plot_memory: unknown ssm_state_dtype 'float8'"),
])
def test_plot_memory_refuses_what_it_cannot_draw(tmp_path, kwargs, why):
    """Keys one name as str() writes them drew one line (the second overwrote the first); 10^400 bytes was
    OverflowError; a bad batch or dtype only labelled the axis. Each an ArchDSLError, nothing written."""
    args = {"lens": [1024], "data": {"a": [1]}, "path": str(tmp_path / "m.svg")} | kwargs
    with pytest.raises(ArchDSLError, match=why):
        plot_memory(**args)
    assert os.listdir(tmp_path) == []
    plot_memory([1024], {"a": [2**70]}, str(tmp_path / "m.svg"))  # past 2^63 but a float: drawn


def test_a_long_name_keeps_the_strip_narrow(tmp_path, figure):
    """A 3000-character name made the strip's title, and the PNG, 33 108 pixels wide."""
    fig = figure(archdsl.parse("4×mamba2", name="x" * 3000, d_model=64, vocab_size=100))
    assert fig.axes[0].get_title().endswith(": 4 layers") and len(fig.axes[0].get_title()) < 140
    draw(archdsl.parse("4×mamba2", name="x" * 3000, d_model=64, vocab_size=100), str(tmp_path / "s.png"))
    assert png_size(tmp_path / "s.png")[0] < 1500


SIX_GROUPS = ", ".join(f"attn(shared=layer_group_{i}), attn(shared=layer_group_{i})" for i in range(1, 7))


@pytest.mark.parametrize("layout, groups", [
    (SIX_GROUPS, 6),
    (", ".join(f"mamba2(shared=g{i:02d}), mamba2(shared=g{i:02d})" for i in range(20)), 20),
])
def test_each_shared_group_has_its_own_outline_and_mark(figure, layout, groups):
    """From the sixth group on, GROUP_COLORS repeated: layer_group_1 and layer_group_6 both black, both `layer…`,
    two alike legend swatches. Each group's boxes share one (colour, line style) and one mark, no two groups alike,
    up to 20 groups; the legend names each group with its own swatch."""
    fig = figure(archdsl.parse(layout, d_model=64, vocab_size=100))
    shared = [p for p in rectangles(fig) if p.get_linewidth() > 1]
    assert len(shared) == 2 * groups
    # by dash pattern: a legend's copy of a patch keeps its dashes, not the name of its line style
    outlines = [(tuple(p.get_edgecolor()), p._unscaled_dash_pattern) for p in shared]
    assert outlines[0::2] == outlines[1::2] and len(set(outlines)) == groups  # layers 2i, 2i + 1: one group
    marks = [t.get_text() for t in fig.axes[0].texts if not t.get_text().isdigit()]
    assert marks[0::2] == marks[1::2] and len(set(marks)) == groups and all(len(m) <= 6 for m in marks)
    legend = fig.axes[0].get_legend()
    swatches = [(tuple(h.get_edgecolor()), h._unscaled_dash_pattern)
                for h, t in zip(legend.legend_handles, legend.get_texts()) if t.get_text().startswith("shared: ")]
    assert len(swatches) == groups and set(swatches) == set(outlines)


def test_group_marks_are_short_and_unique():
    assert group_marks(["a very long group name"]) == {"a very long group name": "a ver…"}
    assert group_marks(["layer_group_1", "layer_group_6", "x"]) == {"layer_group_1": "la…p_1",
                                                                    "layer_group_6": "la…p_6", "x": "x"}
    names = ["blockAmiddle_1", "blockBmiddle_1", "blocks"]  # cut alike twice: every group numbered
    assert group_marks(names) == {"blockAmiddle_1": "g1", "blockBmiddle_1": "g2", "blocks": "g3"}
    names = [f"n{i}" * 4 for i in range(100)]
    assert len(set(group_marks(names).values())) == 100


def test_group_names_with_an_underscore_are_shown(figure):
    fig = figure(archdsl.parse("attn(shared=_g), attn(shared=_g)", d_model=64, vocab_size=100))
    assert "shared: _g" in texts(fig) and "_g" in texts(fig)


def test_each_config_of_a_kind_has_its_own_hatch(figure):
    """From the sixth config of a kind, HATCHES repeated: attn(window=1) and attn(window=6) were drawn alike,
    columns and legend. Up to len(HATCHES) hatched configs of one kind and its plain one each look their own; one
    more is refused, and the message counts what is there."""
    n = len(HATCHES)
    layout = ", ".join(["attn"] + [f"attn(window={w})" for w in range(1, n + 1)] + ["mamba2(d_state=8), mamba2"])
    fig = figure(archdsl.parse(layout, d_model=64, vocab_size=100))
    cols = [(tuple(p.get_facecolor()), p.get_hatch()) for p in rectangles(fig)]
    assert len(set(cols)) == len(cols) == n + 3
    legend = fig.axes[0].get_legend()
    assert len({(tuple(h.get_facecolor()), h.get_hatch()) for h in legend.legend_handles}) == n + 3
    too_many = ", ".join(["attn"] + [f"attn(window={w})" for w in range(1, n + 2)])
    message = f"{n + 1} configs of attn other than a plain attn, and the picture tells at most {n} of one colour apart"
    with pytest.raises(ArchDSLError, match=re.escape(message)):
        strip_figure(archdsl.parse(too_many, d_model=64, vocab_size=100))
    no_plain = ", ".join(f"attn(window={w})" for w in range(1, n + 2))  # had said n + 2 configs, and n + 1 refused
    with pytest.raises(ArchDSLError, match=re.escape(message)):
        strip_figure(archdsl.parse(no_plain, d_model=64, vocab_size=100))


def test_mermaid_shows_the_embedding_read_at_layer_0_like_dot():
    """DOT drew `embed -> L0 [label="+ embedding"]` where layer 0's shared Zamba block reads the embedding;
    Mermaid a plain `embed --> L0`, as if it read nothing."""
    for layout in ("4×mamba2, zamba(shared) at 0 2", "9×mamba2, zamba(shared) at 0 3 6"):
        spec = archdsl.parse(layout)
        mmd, dot = to_mermaid(spec), to_dot(spec)
        check_mermaid(mmd)
        assert '  embed -> L0 [label="+ embedding"];' in dot.splitlines()
        assert '  embed -->|"+ embedding"| L0' in mmd.splitlines() and "  embed --> L0" not in mmd.splitlines()
    assert "  embed --> L0" in to_mermaid(archdsl.parse("4×mamba2")).splitlines()


def test_strip_rows_compares_each_row_once(monkeypatch):
    """`graph 100000×mamba2 --every-layer` took 27 s to refuse: with fold n + 1, each row compared every alike row
    after it (quadratic). Counted here in comparisons, not seconds."""
    import archdsl.draw.strip as strip

    calls = [0]

    class Sig:  # alike, never the same object: a list's == compares them
        def __eq__(self, other):
            calls[0] += 1
            return True

        __hash__ = None

    monkeypatch.setattr(strip, "layer_signature", lambda subs: Sig())
    n = 32 * 200
    width, drawn = strip_rows(list(range(n)), n + 1)
    assert width == 32 and drawn == [(32 * r, 1) for r in range(200)]
    assert calls[0] < 4 * n, calls[0]
    calls[0] = 0
    assert strip_rows(list(range(n)))[1] == [(0, 200)]
    assert calls[0] < 4 * n


@pytest.mark.parametrize("ext", [".svg", ".pdf", ".png"])
def test_a_picture_is_the_same_bytes_every_time(tmp_path, monkeypatch, ext):
    """An SVG carried the time (`<dc:date>`) and random clip-path ids, a PDF its creation date: each run gave new
    bytes, though these pictures are committed to docs."""
    import time

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)  # matplotlib's own way to a fixed date: not relied on
    spec = spec_file("demo-zamba")
    draw(spec, str(tmp_path / f"a{ext}"))
    plot_memory([1024, 8192], {"a": [1, 2], "b": [3, 4]}, str(tmp_path / f"m{ext}"))
    if ext == ".pdf":  # its date has whole seconds
        time.sleep(1.1)
    draw(spec, str(tmp_path / f"b{ext}"))
    plot_memory([1024, 8192], {"a": [1, 2], "b": [3, 4]}, str(tmp_path / f"n{ext}"))
    assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    assert (tmp_path / f"m{ext}").read_bytes() == (tmp_path / f"n{ext}").read_bytes()
    assert b"<dc:date>" not in (tmp_path / f"a{ext}").read_bytes() and b"CreationDate" not in (
        tmp_path / f"a{ext}").read_bytes()


def test_a_picture_written_through_a_link_keeps_the_link(tmp_path):
    (tmp_path / "target.svg").write_text("old")
    (tmp_path / "link.svg").symlink_to("target.svg")
    draw("mamba2", str(tmp_path / "link.svg"))
    draw("mamba2", str(tmp_path / "link.dot"))  # a new name: a file
    assert (tmp_path / "link.svg").is_symlink() and (tmp_path / "target.svg").read_text().startswith("<?xml")
    assert sorted(os.listdir(tmp_path)) == ["link.dot", "link.svg", "target.svg"]


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend stayed Agg after one draw (matplotlib.use("Agg") at each picture): the figures
    are matplotlib's Figure, drawn without pyplot, which is never imported."""
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
import archdsl
from archdsl.draw import draw, plot_memory
from archdsl.explore.report import plot_accuracy, plot_pareto
draw("2×(mamba2, attn)", {str(tmp_path / "s.png")!r})
plot_memory([1024, 2048], {{"a": [1, 2]}}, path={str(tmp_path / "m.svg")!r})
plot_pareto([], ["params"], {str(tmp_path / "p.png")!r})
plot_accuracy([], {str(tmp_path / "a.png")!r})
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "False"]
    assert all((tmp_path / f).stat().st_size > 0 for f in ("s.png", "m.svg", "p.png", "a.png"))
