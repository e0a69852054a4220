"""The layout language: parse_layout (text → AST), check_layout (a tree made by hand), format_layout (AST →
canonical text)."""
from .ast import NOSPAN, Arg, Block, Group, Layer, Layout, Modifier, Node, Repeat, Span, Value
from .check import check_layout, node_text
from .fmt import format_block, format_layout, format_modifier, format_node, format_value
from .parser import MAX_NESTING, line_breaks, parse_layout

__all__ = ["parse_layout", "check_layout", "node_text", "line_breaks", "format_layout", "format_node",
           "format_block", "format_modifier", "format_value", "MAX_NESTING", "Layout", "Layer", "Block", "Arg",
           "Repeat", "Group", "Modifier", "Node", "Span", "NOSPAN", "Value"]
