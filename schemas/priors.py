"""Anomaly priors: what a user knows about each defect category before seeing (many) examples.

A priors file describes one image class of one dataset and lists its defect categories. Each category carries
the paper's three priors (Appendix A.2): textual descriptions, allowed mask shapes and allowed mask sizes. Empty
shape or size lists mean "all" (the paper: when both are unknown, every local mask type is used; the foreground
mask is only used when named). An optional typed ``appearance`` drives the offline procedural synthesiser, which
cannot read free text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MaskShape = Literal[
    "rectangle", "line", "polygon", "ellipse", "hollow_ellipse", "random_brush", "perlin", "foreground"
]
MaskSize = Literal["large", "medium", "small"]
MASK_SHAPES: tuple[str, ...] = get_args(MaskShape)
MASK_SIZES: tuple[str, ...] = get_args(MaskSize)
LOCAL_SHAPES: tuple[str, ...] = tuple(s for s in MASK_SHAPES if s != "foreground")

#: Names that become folder or file names (categories, image classes, run names): letters, digits, ``_ . + -``,
#: starting with a letter or digit, at most 64 characters, no ``..``.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
#: Category names that already mean something: the normal label of the MVTec layout and of predictions, and the
#: open-set class.
RESERVED_CATEGORY_NAMES = frozenset({"good", "normal", "other"})


def check_safe_name(value: str) -> str:
    """``value`` if it can be used as one path component; ValueError saying why otherwise."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be a plain name (letters, digits, '_', '.', '+', '-'; starting with a letter or digit; "
            "at most 64 characters; no '..' or '/')"
        )
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Appearance(_Frozen):
    """How a defect looks, for synthesisers that cannot read text (the offline ``procedural`` backend).

    Attributes:
        tone: sign of the intensity change inside the defect: ``darker``, ``brighter`` or ``any`` (random sign).
        texture: what fills the region: ``smooth`` (low-frequency shading), ``rough`` (high-frequency noise),
            ``transplant`` (texture copied from elsewhere in a normal image) or ``any``.
        edge: ``sharp`` boundaries (holes, cracks) or ``soft`` feathered ones (stains, unevenness).
        contrast: how strong the change is at noise factor 1.0, as a fraction of the full intensity range.
    """

    tone: Literal["darker", "brighter", "any"] = "any"
    texture: Literal["smooth", "rough", "transplant", "any"] = "any"
    edge: Literal["sharp", "soft"] = "soft"
    contrast: float = Field(default=0.35, gt=0.0, le=1.0)


class AnomalyPrior(_Frozen):
    """Prior knowledge about one defect category (paper Table S1)."""

    name: str = Field(min_length=1)
    descriptions: tuple[str, ...] = Field(min_length=1)
    shapes: tuple[MaskShape, ...] = ()
    sizes: tuple[MaskSize, ...] = ()
    negative_prompt: str | None = None
    ignore_foreground: bool = False
    appearance: Appearance | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        check_safe_name(value)
        if value.lower() in RESERVED_CATEGORY_NAMES:
            raise ValueError(
                f"is reserved ({', '.join(sorted(RESERVED_CATEGORY_NAMES))} already mean something)"
            )
        return value

    @field_validator("descriptions")
    @classmethod
    def _non_empty_descriptions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"description [{i}] is empty (got {text!r})")
        return value

    @field_validator("shapes", "sizes")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeated entries in {list(value)}")
        return value

    def mask_types(self) -> list[tuple[str, str | None]]:
        """The (shape, size) pairs this category may draw; foreground has size ``None``.

        Empty ``shapes`` means every local shape (foreground only when named, as the official code does);
        empty ``sizes`` means every size.
        """
        shapes = self.shapes or LOCAL_SHAPES
        sizes = self.sizes or MASK_SIZES
        pairs: list[tuple[str, str | None]] = []
        for shape in shapes:
            if shape == "foreground":
                pairs.append((shape, None))
            else:
                pairs.extend((shape, size) for size in sizes)
        return pairs

    def prompt(self) -> str:
        """The first description, the prompt diffusion backends use by default."""
        return self.descriptions[0]


class PriorsFile(_Frozen):
    """One priors YAML: a dataset's image class and its defect categories."""

    dataset: str = Field(min_length=1)
    image_class: str = Field(min_length=1)
    categories: tuple[AnomalyPrior, ...] = Field(min_length=1)

    @field_validator("dataset", "image_class")
    @classmethod
    def _safe_names(cls, value: str) -> str:
        return check_safe_name(value)

    @field_validator("categories")
    @classmethod
    def _unique_names(cls, value: tuple[AnomalyPrior, ...]) -> tuple[AnomalyPrior, ...]:
        seen: set[str] = set()
        for prior in value:
            if prior.name in seen:
                raise ValueError(f"duplicate category name {prior.name!r}")
            seen.add(prior.name)
        return value

    @property
    def names(self) -> list[str]:
        """Category names in file order; label index i+1 belongs to names[i] (0 is normal)."""
        return [p.name for p in self.categories]

    def category(self, name: str) -> AnomalyPrior:
        for prior in self.categories:
            if prior.name == name:
                return prior
        raise KeyError(f"no category {name!r} in {self.dataset}/{self.image_class}; known: {self.names}")


class PriorsError(ValueError):
    """A priors file that cannot be used; the message names the file, the field and the value."""


def format_validation_error(
    source: str, error: ValidationError, data: object = None, source_of: Callable[[str], str] | None = None
) -> str:
    """One line per problem: ``source: field.path: message (got value)``; ``source_of(field.path)``, when
    given, names the source of each field (the config file, or the ``--set`` override that set it)."""
    lines = []
    errors = error.errors()
    failed_inside = {o["loc"][:k] for o in errors for k in range(len(o["loc"]))}
    for item in errors:
        # a tuple whose items failed is also reported as too short; the item errors say why
        if item["type"] == "too_short" and item["loc"] in failed_inside:
            continue
        loc = ".".join(_loc_part(p, data) for p in item["loc"]) or "<root>"
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        where = source_of(loc) if source_of is not None else source
        lines.append(f"{where}: {loc}: {item['msg']}{shown}")
    return "; ".join(lines)


def _loc_part(part: object, data: object) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def load_priors(path: str | Path) -> PriorsFile:
    """Read and validate a priors YAML; raises :class:`PriorsError` naming file, field and value."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise PriorsError(f"{path}: no such priors file") from exc
    except yaml.YAMLError as exc:
        raise PriorsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    try:
        return PriorsFile.model_validate(data)
    except ValidationError as exc:
        raise PriorsError(format_validation_error(str(path), exc)) from exc
