"""Static checker for launch files (no `launch` import: it is not installable here).

Parses a Python launch file with ``ast`` and, for every ``Node(package=<pkg>, executable=...)``:
- the executable is installed (``<prefix>/lib/<pkg>/<exe>``, executable bit set);
- its node module is found from the installed script (``from cosmos_ros.nodes.x import main``) and exposes a
  parameter table ``PARAMETERS`` (names = first field of each entry; see cosmos_ros.nodes.param_table);
- every params YAML the node gets (string constants ending in .yaml, also through a LaunchConfiguration
  whose DeclareLaunchArgument default names one) exists, and every key under the node's name (or ``/**``)
  in ``ros__parameters`` is a declared parameter; keys of inline dicts are checked the same way;
- every ``LaunchConfiguration("x")`` has a ``DeclareLaunchArgument("x")``.

Use: ``problems = check_launch_file(path)``; an empty list means the file is consistent.
"""

from __future__ import annotations

import ast
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class NodeSpec:
    """What the launch file says about one Node action."""

    package: str
    executable: str
    name: str | None
    yaml_files: list[str] = field(default_factory=list)
    inline_keys: list[str] = field(default_factory=list)
    lineno: int = 0


def _const(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _call_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _yaml_constants(node: ast.AST) -> list[str]:
    return [
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.endswith((".yaml", ".yml"))
    ]


class _LaunchFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.calls = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call)]
        # variable name -> LaunchConfiguration argument name
        self.var_to_arg: dict[str, str] = {}
        for n in ast.walk(self.tree):
            if (
                isinstance(n, ast.Assign)
                and isinstance(n.value, ast.Call)
                and _call_name(n.value) == "LaunchConfiguration"
                and n.value.args
            ):
                for t in n.targets:
                    if isinstance(t, ast.Name) and isinstance(_const(n.value.args[0]), str):
                        self.var_to_arg[t.id] = n.value.args[0].value  # type: ignore[attr-defined]
        self.declared: dict[str, ast.Call] = {}
        for c in self.calls:
            if _call_name(c) == "DeclareLaunchArgument" and c.args and isinstance(_const(c.args[0]), str):
                self.declared[c.args[0].value] = c  # type: ignore[attr-defined]

    def used_arguments(self) -> set[str]:
        return {
            c.args[0].value  # type: ignore[attr-defined]
            for c in self.calls
            if _call_name(c) == "LaunchConfiguration" and c.args and isinstance(_const(c.args[0]), str)
        }

    def _arg_name(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.var_to_arg.get(node.id)
        if isinstance(node, ast.Call) and _call_name(node) == "LaunchConfiguration" and node.args:
            val = _const(node.args[0])
            return val if isinstance(val, str) else None
        return None

    def nodes(self) -> list[NodeSpec]:
        specs = []
        for c in self.calls:
            if _call_name(c) != "Node":
                continue
            pkg, exe = _const(_kw(c, "package")), _const(_kw(c, "executable"))
            if not isinstance(pkg, str) or not isinstance(exe, str):
                continue
            name = _const(_kw(c, "name"))
            spec = NodeSpec(pkg, exe, name if isinstance(name, str) else None, lineno=c.lineno)
            params = _kw(c, "parameters")
            elements = params.elts if isinstance(params, (ast.List, ast.Tuple)) else []
            for el in elements:
                if isinstance(el, ast.Dict):
                    spec.inline_keys += [k.value for k in el.keys if isinstance(_const(k), str)]  # type: ignore[union-attr]
                    continue
                spec.yaml_files += _yaml_constants(el)
                arg = self._arg_name(el)
                if arg is not None and arg in self.declared:
                    default = _kw(self.declared[arg], "default_value")
                    if default is None and len(self.declared[arg].args) > 1:
                        default = self.declared[arg].args[1]
                    if default is not None:
                        spec.yaml_files += _yaml_constants(default)
            specs.append(spec)
        return specs


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        if isinstance(v, dict):
            keys += _flatten(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def node_module(script: Path) -> str | None:
    """Module whose ``main`` an installed executable script calls (``from <module> import main``)."""
    tree = ast.parse(script.read_text(errors="replace"))
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and any(a.name == "main" for a in n.names):
            return n.module
    return None


def parameter_table(module: str) -> tuple[set[str], str | None]:
    """Declared parameter names and default node name (``NODE_NAME``) of a node module."""
    mod = importlib.import_module(module)
    table = getattr(mod, "PARAMETERS", None)
    if table is None:
        raise AttributeError(f"{module} has no PARAMETERS table")
    names = {p[0] if isinstance(p, tuple) else p.name for p in table}
    return names, getattr(mod, "NODE_NAME", None)


def check_launch_file(
    launch_file: str | Path, prefix: str | Path | None = None, config_dirs: list[Path] | None = None
) -> list[str]:
    """All problems found in ``launch_file`` (see the module docstring); [] when consistent.

    ``prefix`` is the package's install prefix (default: from ament_index); YAML files are looked up by
    base name in ``config_dirs`` (default: the installed share/<pkg>/config).
    """
    lf = _LaunchFile(Path(launch_file))
    problems: list[str] = []
    for arg in sorted(lf.used_arguments() - set(lf.declared)):
        problems.append(f"LaunchConfiguration({arg!r}) is used but never declared with DeclareLaunchArgument")
    specs = lf.nodes()
    if not specs:
        problems.append(f"{launch_file}: no Node(package=..., executable=...) found")
    for spec in specs:
        where = f"{Path(launch_file).name}:{spec.lineno} ({spec.package}/{spec.executable})"
        if prefix is None:
            from ament_index_python.packages import get_package_prefix

            pkg_prefix = Path(get_package_prefix(spec.package))
        else:
            pkg_prefix = Path(prefix)
        exe = pkg_prefix / "lib" / spec.package / spec.executable
        if not exe.is_file() or not os.access(exe, os.X_OK):
            problems.append(f"{where}: executable {exe} is not installed (or not executable)")
            continue
        module = node_module(exe)
        if module is None:
            problems.append(f"{where}: cannot tell which module {exe} runs (no `from ... import main`)")
            continue
        try:
            declared, default_name = parameter_table(module)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        node_name = spec.name or default_name
        for key in spec.inline_keys:
            if key not in declared:
                problems.append(f"{where}: inline parameter {key!r} is not declared by {module}")
        dirs = config_dirs
        if dirs is None:
            dirs = [pkg_prefix / "share" / spec.package / "config"]
        for fname in spec.yaml_files:
            found = [d / Path(fname).name for d in dirs if (d / Path(fname).name).is_file()]
            if not found:
                problems.append(f"{where}: parameter file {fname} not found in {[str(d) for d in dirs]}")
                continue
            data = yaml.safe_load(found[0].read_text()) or {}
            sections = [
                k for k in data if k in ("/**", node_name, f"/{node_name}") or k.endswith(f"/{node_name}")
            ]
            if not sections:
                problems.append(f"{where}: {found[0]} has no section for node {node_name!r} (or /**)")
            for sec in sections:
                params = (data[sec] or {}).get("ros__parameters")
                if not isinstance(params, dict):
                    problems.append(f"{where}: {found[0]} [{sec}] has no ros__parameters mapping")
                    continue
                for key in _flatten(params):
                    if key not in declared:
                        problems.append(
                            f"{where}: {found[0].name} sets {key!r}, which {module} does not declare"
                        )
    return problems
