"""Read a torch.export ``.pt2`` archive without running anything it holds.

``torch.export.load`` can run code from the archive: it unpickles the sample inputs (retrying
with ``weights_only=False`` when the safe unpickler refuses them), loads weights and constants
marked ``use_pickle`` with ``weights_only=False``, unpickles custom and opaque objects, loads
AOTInductor shared libraries, evaluates the symbolic shape expressions of the graph with
``sympy.sympify`` (an ``eval``) and compiles the graph's guard code. This module:

* reads the cprfl_zoo metadata (an extra file) with :mod:`zipfile`, unpickling nothing
  (:func:`read_extra_json`);
* checks an archive before it goes to ``torch.export.load`` (:func:`check_loadable`): the entries
  are those :func:`torch.export.save` writes for one program (no AOTInductor, ExecuTorch or
  legacy pickled entries), no weight or constant needs pickle, the sample inputs load with
  ``torch.load(weights_only=True)`` (so torch never retries without it), every symbolic
  expression is arithmetic on shape symbols, and the graph carries no guard code.

Archives written by :func:`cprfl_zoo.export.export_pt2` pass. Checks are made on the bytes
torch then loads (the caller reads the file once), so the file cannot change in between.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

__all__ = ["check_loadable", "read_extra_json"]

_MODEL = "model"
_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{_MODEL}.json",
        f"data/sample_inputs/{_MODEL}.pt",
        f"data/weights/{_MODEL}_weights_config.json",
        f"data/constants/{_MODEL}_constants_config.json",
    }
)
_PAYLOADS = {  # config file -> (folder, name pattern of a tensor stored without pickle)
    f"data/weights/{_MODEL}_weights_config.json": ("data/weights/", re.compile(r"weight_\d+")),
    f"data/constants/{_MODEL}_constants_config.json": (
        "data/constants/",
        re.compile(r"tensor_\d+"),
    ),
}
_EXTRA_DIR = "extra/"

# Names a symbolic shape expression may use: sympy's arithmetic, comparisons and logic, and the
# functions torch's deserializer defines for sympify; anything else (a builtin, an attribute, a
# lambda, a subscript) would let sympify's eval run code.
_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs",
        "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "ITE", "floor",
        "ceiling", "sqrt", "oo", "zoo", "nan", "true", "false", "True", "False",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
        "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
        "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
_SYMBOL_NAME = re.compile(r"[a-z]+\d+")  # s0, s77, u3: the names torch gives shape symbols
_EXPRESSION_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.keyword,
    ast.Name, ast.Constant, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)  # fmt: skip


class UnsafeArchiveError(ValueError):
    """A .pt2 archive holds something that loading it would run or unpickle."""


def _zip_entries(data: bytes, source: str) -> tuple[zipfile.ZipFile, str, list[str]]:
    """The open archive, its top folder and its entry names relative to that folder."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{source}: not a torch.export .pt2 file ({e}); export_pt2 writes a zip archive"
        ) from None
    names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or any("/" not in name for name in names):
        raise ValueError(
            f"{source}: not a torch.export .pt2 file (its entries are not all in one top "
            f"folder: {sorted(tops)[:5]})"
        )
    if len(set(names)) != len(names):
        raise UnsafeArchiveError(f"{source}: the archive lists an entry twice")
    (top,) = tops
    return archive, top + "/", [name[len(top) + 1 :] for name in names]


def read_extra_json(data: bytes, name: str, source: str) -> Any:
    """Parse the extra file ``extra/<name>`` of a .pt2 archive as JSON, unpickling nothing.

    Args:
        data: The archive's bytes.
        name: The extra file's name.
        source: How to name the archive in messages (its path).

    Returns:
        The parsed JSON.

    Raises:
        ValueError: If ``data`` is not a .pt2 archive, or it has no such extra file, or the file
            is not UTF-8 JSON.
    """
    archive, top, entries = _zip_entries(data, source)
    with archive:
        if _EXTRA_DIR + name not in entries:
            raise ValueError(
                f"{source} is a torch.export file without {name} (not written by cprfl_zoo.export)"
            )
        raw = archive.read(top + _EXTRA_DIR + name)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{source}: {_EXTRA_DIR}{name} is not UTF-8 JSON ({e})") from None


def _payload_names(config: Any, pattern: re.Pattern[str], where: str) -> Iterator[str]:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UnsafeArchiveError(f"{where} is not a payload config")
    for fqn, meta in config["config"].items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise UnsafeArchiveError(
                f"{where}: {fqn!r} is stored with pickle (use_pickle), which would run code on load"
            )
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise UnsafeArchiveError(
                f"{where}: {fqn!r} is {path_name!r}, not a plain tensor (custom and opaque "
                "objects are unpickled on load)"
            )
        yield path_name


def _check_expression(text: Any, source: str) -> None:
    try:
        tree = ast.parse(text, mode="eval") if isinstance(text, str) else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    safe = tree is not None
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, _EXPRESSION_NODES):
            safe = False
        elif isinstance(node, ast.Name):
            safe &= node.id in _SYMPY_NAMES or bool(_SYMBOL_NAME.fullmatch(node.id))
        elif isinstance(node, ast.Call):
            safe &= isinstance(node.func, ast.Name)
        elif isinstance(node, ast.Constant):
            # a string only as a symbol's name: sympy functions sympify string arguments
            safe &= isinstance(node.value, (int, float, bool)) or (
                isinstance(node.value, str) and bool(_SYMBOL_NAME.fullmatch(node.value))
            )
    if not safe:
        raise UnsafeArchiveError(
            f"{source}: the graph holds the symbolic expression {str(text)[:80]!r}, which is not "
            "shape arithmetic (torch.export evaluates it with sympify, i.e. eval)"
        )


def _walk_expressions(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def check_loadable(data: bytes, source: str) -> None:
    """Refuse a .pt2 archive that ``torch.export.load`` would unpickle or run code from.

    See the module docstring for what is checked.

    Args:
        data: The archive's bytes, exactly those that will be passed to ``torch.export.load``.
        source: How to name the archive in messages (its path).

    Raises:
        ValueError: If ``data`` is not a .pt2 archive of one exported program.
        UnsafeArchiveError: (a ``ValueError``) If loading it could run code.
    """
    import torch
    from torch.export.pt2_archive import PT2ArchiveReader

    archive, top, entries = _zip_entries(data, source)
    with archive:
        try:
            torch_entries = PT2ArchiveReader(io.BytesIO(data)).get_file_names()
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f"{source}: not a torch.export .pt2 file ({e})") from None
        # the names torch's zip reader sees must be the ones checked here
        if sorted(torch_entries) != sorted(entries):
            raise UnsafeArchiveError(f"{source}: torch and zipfile read different entries")
        missing = sorted(_FIXED_ENTRIES - set(entries))
        if missing:
            raise ValueError(f"{source}: not a torch.export .pt2 file of one program ({missing})")
        allowed = set(_FIXED_ENTRIES)
        for config_name, (folder, pattern) in _PAYLOADS.items():
            config = _load_json(archive, top + config_name, source)
            allowed.update(folder + n for n in _payload_names(config, pattern, source))
        unexpected = [e for e in entries if e not in allowed and not e.startswith(_EXTRA_DIR)]
        if unexpected:
            raise UnsafeArchiveError(
                f"{source}: unexpected entries {sorted(unexpected)[:5]} (cprfl_zoo loads only "
                "the program, its plain tensors and extra files: no AOTInductor libraries, "
                "pickled or legacy payloads, or other programs)"
            )
        program = _load_json(archive, f"{top}models/{_MODEL}.json", source)
        if not isinstance(program, dict):
            raise ValueError(f"{source}: models/{_MODEL}.json is not a JSON object")
        if program.get("guards_code"):
            raise UnsafeArchiveError(
                f"{source}: the program carries guard code, which torch compiles and runs"
            )
        for expression in _walk_expressions(program):
            _check_expression(expression, source)
        sample_inputs = archive.read(f"{top}data/sample_inputs/{_MODEL}.pt")
    try:
        torch.load(io.BytesIO(sample_inputs), weights_only=True)
    except Exception as e:  # the safe unpickler's refusal, whatever its type
        raise UnsafeArchiveError(
            f"{source}: the sample inputs do not load with torch.load(weights_only=True) "
            f"({type(e).__name__}); torch.export would retry with weights_only=False"
        ) from None


def _load_json(archive: zipfile.ZipFile, name: str, source: str) -> Any:
    try:
        return json.loads(archive.read(name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{source}: {name} is not UTF-8 JSON ({e})") from None
