"""The package's shape: no import cycle (function-local imports included), small modules, every layer kind handled."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import mobile_lenet
from mobile_lenet import spec
from mobile_lenet.codegen import c_float, c_int8, memory
from mobile_lenet.engines import reference, reference_int8
from mobile_lenet.model import network
from mobile_lenet.quantization import quantize
from mobile_lenet.spec import LayerKind

PACKAGE = Path(mobile_lenet.__file__).parent
MAX_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every package module ``path`` imports, anywhere in the file, with the packages whose __init__ runs."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name:
                    found.add(prefix)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_counting_function_local_imports():
    modules = package_modules()
    graph = {name: imported_modules(path, modules) - {"mobile_lenet"} for name, path in modules.items()}
    assert len(graph) > 30 and graph["mobile_lenet.apps.cli"]  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_over_600_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in package_modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_generated_c_is_not_held_in_python_strings():
    """C lives in c/*.c and c/*.h; a Python module holding a C function body is the old layout coming back."""
    for name, path in package_modules().items():
        text = path.read_text()
        assert "#include <" not in text and "for (int " not in text, name


# ------------------------------------------------------------------------------------------------ layer kinds
def every_kind_row() -> dict[LayerKind, spec.Layer]:
    rows = {}
    for layer in spec.LAYERS:
        rows.setdefault(layer.kind, layer)
    return rows


def test_the_table_uses_every_kind():
    assert set(every_kind_row()) == set(LayerKind)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_float_engine_and_generator_handles_every_kind(kind):
    layer = every_kind_row()[kind]
    tensors = {name: np.ones(shape, np.float32) for name, _, shape in spec.noodle_tensors()}
    h, w, c = layer.in_shape if len(layer.in_shape) == 3 else (1, 1, layer.in_shape[0])
    x = np.ones((1, c, h, w) if len(layer.in_shape) == 3 else (1, c), np.float32)
    assert reference.run_float_layer(layer, x, tensors).shape[1:] == (
        (layer.out_channels,) + tuple(layer.out_shape[:2]) if len(layer.out_shape) == 3 else layer.out_shape)
    assert isinstance(network.make_layer(layer), network.nn.Module)
    step = next(s for s in memory.plan().steps if s.layer is layer)
    assert c_float.layer_statements(step)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_int8_engine_and_generator_handles_every_kind(kind):
    """BN, ReLU and padding fold into the quantized layer before them; the other kinds are int8 layers."""
    tensors = {name: np.ones(shape, np.float32) for name, _, shape in spec.noodle_tensors()}
    qmodel = quantize.quantize_model(tensors, np.full((2, 28, 28), 128, np.uint8))
    covered = {spec.LAYER_BY_NAME[row].kind for layer in qmodel.layers for row in layer.rows}
    assert kind in covered
    steps = {s.layer.name: s for s in memory.int8_plan().steps}
    for layer in qmodel.layers:
        if kind in {spec.LAYER_BY_NAME[row].kind for row in layer.rows}:
            x = np.zeros((1,) + ((layer.in_shape[2],) + tuple(layer.in_shape[:2]) if len(layer.in_shape) == 3
                                 else layer.in_shape), np.int8)
            assert reference_int8.run_int8_layer(layer, x).dtype == np.int8
            assert c_int8.layer_statements(layer, steps[layer.name], 1)
