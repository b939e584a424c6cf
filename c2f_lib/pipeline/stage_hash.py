"""What a stage's result depends on, and one hash of it.

A stage's inputs are (1) its notebook's code cells, (2) the parameters injected into it, (3) the
source of every `c2f_lib` module it imports — found by walking the imports of the notebook's code
and then of each library module, transitively, so a change to a module the stage never imports does
not rerun it — and (4) the digests of every earlier stage's outputs (the files it wrote, hashed by
content), so a rerun upstream stage that wrote different bytes, or a changed or deleted output,
makes everything after it stale. `StageInputs.differences` says which of them changed.

The walk reads imports statically (``import``/``from`` anywhere in a file, relative ones too) and two
dynamic forms: ``importlib.import_module("c2f_lib.x")`` and an f-string ``f"c2f_lib.pkg.{name}"``,
which counts as every module of ``c2f_lib.pkg`` (the model registry imports its models that way).
Non-Python files beside a module count as part of it when the module names them in a string
constant (``tiny_clip.py`` and ``"model_configs"``). Code the walk cannot parse (IPython syntax
beyond ``%``/``!`` lines) counts as importing the whole library.
"""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import c2f_lib

LIBRARY_DIR = Path(c2f_lib.__file__).resolve().parent


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- the import walk
def _strip_magics(source: str) -> str:
    """IPython line magics and shell escapes become blank lines (so line numbers stay)."""
    lines = source.splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


class Library:
    """A package whose source a stage's hash covers (c2f_lib; a test passes a small one of its own).

    Reads each module once per instance: make one per run so edits between runs are seen.
    """

    def __init__(self, directory: Path = LIBRARY_DIR):
        self.dir = Path(directory).resolve()
        self.name = self.dir.name
        self.project_dir = self.dir.parent
        self._deps: dict[str, tuple[set[str], list[Path]]] = {}

    def module_file(self, name: str) -> Path | None:
        """The file of module `name` ("c2f_lib.a.b" -> c2f_lib/a/b.py or c2f_lib/a/b/__init__.py)."""
        parts = name.split(".")
        if parts[0] != self.name:
            return None
        base = self.dir.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def package_modules(self, package: str) -> set[str]:
        """Every module below package `package` (itself included)."""
        init = self.module_file(package)
        if init is None or init.name != "__init__.py":
            return set()
        found = set()
        for path in init.parent.rglob("*.py"):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(self.dir).with_suffix("").parts
                found.add(".".join((self.name, *(rel[:-1] if rel[-1] == "__init__" else rel))))
        return found

    def imports(self, source: str, module: str | None = None) -> set[str] | None:
        """Modules of this library `source` imports, with their parent packages (importing a.b.c runs
        a/__init__ and a/b/__init__ too); `module` is the source's own name, for relative imports.
        None when the source does not parse."""
        try:
            tree = ast.parse(_strip_magics(source))
        except SyntaxError:
            return None
        package = module.split(".") if module else []
        if module and self.module_file(module).name != "__init__.py":
            package = package[:-1]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                    == "import_module" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                    found |= self.package_modules(str(arg.values[0].value).rstrip("."))
        names = {name for name in found if self.module_file(name)}
        return {".".join(name.split(".")[:i]) for name in names for i in range(1, len(name.split(".")) + 1)}

    def _module_deps(self, name: str) -> tuple[set[str], list[Path]]:
        """(modules `name` imports, the non-Python files beside it that it names in a string constant)."""
        if name not in self._deps:
            path = self.module_file(name)
            source = path.read_text()
            found = self.imports(source, name)
            try:
                strings = _string_constants(ast.parse(source))
            except SyntaxError:
                strings = set()
            data = []
            for entry in sorted(path.parent.iterdir()):
                if entry.name not in strings or entry.suffix == ".py" or (entry / "__init__.py").exists():
                    continue  # modules and packages are found by the import walk
                data += sorted(p for p in entry.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
                    if entry.is_dir() else [entry]
            self._deps[name] = (self.package_modules(self.name) if found is None else found, data)
        return self._deps[name]

    def sources(self, code: str) -> dict[str, str]:
        """path (relative to the project) -> sha256 of every library file `code` depends on, transitively."""
        start = self.imports(code)
        todo = sorted(self.package_modules(self.name) if start is None else start)
        seen: set[str] = set()
        files: set[Path] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            modules, data = self._module_deps(name)
            files.add(self.module_file(name))
            files.update(data)
            todo.extend(sorted(modules - seen))
        return {str(path.relative_to(self.project_dir)): file_sha256(path) for path in sorted(files)}


# ----------------------------------------------------------------------------- stage inputs
def notebook_code(path: Path) -> str:
    """The notebook's code cells (outputs and metadata do not count)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "\n# ---\n".join(c.source for c in nb.cells if c.cell_type == "code")


def outputs_digest(outputs: dict[str, dict[str, Any]]) -> str:
    """One digest of a stage's outputs: their paths and content hashes."""
    return json_digest({rel: entry["sha256"] for rel, entry in sorted(outputs.items())})


@dataclass(frozen=True)
class StageInputs:
    notebook_sha256: str
    parameters: dict[str, Any]
    library: dict[str, str]            # project-relative path -> sha256
    upstream: dict[str, str]           # stage name -> digest of its outputs

    @classmethod
    def of(cls, notebook: Path, parameters: dict[str, Any], upstream: dict[str, str],
           library: Library) -> "StageInputs":
        code = notebook_code(notebook)
        return cls(hashlib.sha256(code.encode()).hexdigest(), parameters, library.sources(code), upstream)

    def digest(self) -> str:
        return json_digest(asdict(self))[:16]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """What changed since `recorded` (a manifest's "inputs"), in words; empty when nothing did."""
        reasons = []
        if recorded.get("notebook_sha256") != self.notebook_sha256:
            reasons.append("notebook code changed")
        old = recorded.get("parameters", {})
        changed = sorted(k for k in set(old) | set(self.parameters) if old.get(k) != self.parameters.get(k))
        if changed:
            reasons.append("parameters changed: " + ", ".join(
                f"{k} {old.get(k, '(default)')!r} -> {self.parameters.get(k, '(default)')!r}" for k in changed))
        reasons += _changed_files("library", recorded.get("library", {}), self.library)
        old_up = recorded.get("upstream", {})
        reasons += [f"upstream {name} outputs changed" for name in sorted(self.upstream)
                    if old_up.get(name) != self.upstream[name]]
        return reasons


def _changed_files(what: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    if not changed:
        return []
    shown = ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")
    return [f"{what} changed: {shown}"]
