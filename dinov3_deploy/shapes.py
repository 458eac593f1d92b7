"""Input shape ranges of an artifact: batch and H/W as min:opt:max, and the multiple H/W must be.

The same object parses the CLI strings, drives the exporter's dynamic shapes and TensorRT's
optimisation profile, is written to the manifest, and checks every input a runner gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinov3_deploy.errors import InputShapeError


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputShapeError(f"a range needs 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    @property
    def static(self) -> bool:
        return self.min == self.max

    def __str__(self) -> str:
        return str(self.min) if self.static else f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str | int, what: str = "range") -> DimRange:
        """'8' (static), 'min:max' (opt = min) or 'min:opt:max'."""
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            raise InputShapeError(f"{what} '{text}' is not N, MIN:MAX or MIN:OPT:MAX (integers)") from None
        if len(parts) == 1:
            parts = parts * 3
        elif len(parts) == 2:
            parts = [parts[0], parts[0], parts[1]]
        elif len(parts) != 3:
            raise InputShapeError(f"{what} '{text}' is not N, MIN:MAX or MIN:OPT:MAX")
        try:
            return cls(*parts)
        except InputShapeError as exc:
            raise InputShapeError(f"{what} '{text}': {exc}") from None

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


def parse_static(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) (height x width); '512' -> (512, 512)."""
    parts = text.lower().split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        raise InputShapeError(f"--static '{text}' is not HEIGHTxWIDTH (e.g. 512x512)") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise InputShapeError(f"--static '{text}' is not HEIGHTxWIDTH (e.g. 512x512)")
    return hw[0], hw[1]


@dataclass(frozen=True)
class ShapeSpec:
    """The inputs an artifact accepts: NCHW (or NHWC for uint8 input) with these ranges."""

    batch: DimRange
    height: DimRange
    width: DimRange
    multiple: int

    def __post_init__(self) -> None:
        for name, r in (("--height", self.height), ("--width", self.width)):
            bad = [v for v in r.to_list() if v % self.multiple]
            if bad:
                raise InputShapeError(
                    f"{name} {r} is not a multiple of {self.multiple} (this backbone's input multiple): "
                    f"use e.g. {_round_up(bad[0], self.multiple)} instead of {bad[0]}"
                )

    def check(self, batch: int, height: int, width: int) -> None:
        """Raise InputShapeError unless (batch, height, width) is an input this artifact accepts."""
        problems = []
        if height % self.multiple or width % self.multiple:
            problems.append(
                f"height and width must be multiples of {self.multiple}, got {height}x{width} "
                f"(pad or resize to {_round_up(height, self.multiple)}x{_round_up(width, self.multiple)})"
            )
        for name, v, r in (("batch", batch, self.batch), ("height", height, self.height), ("width", width, self.width)):
            if not r.min <= v <= r.max:
                problems.append(f"{name} {v} outside the exported range {r.min}..{r.max}")
        if problems:
            raise InputShapeError("; ".join(problems))

    @property
    def opt_shape(self) -> tuple[int, int, int]:
        return self.batch.opt, self.height.opt, self.width.opt

    def to_dict(self) -> dict:
        return {"batch": self.batch.to_list(), "height": self.height.to_list(), "width": self.width.to_list(),
                "multiple": self.multiple}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeSpec:
        return cls(DimRange(*d["batch"]), DimRange(*d["height"]), DimRange(*d["width"]), int(d["multiple"]))


def _round_up(v: int, m: int) -> int:
    return max(m, (v + m - 1) // m * m)
