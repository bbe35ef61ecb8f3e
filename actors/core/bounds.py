"""Bounds on the numbers of settings, as msgspec types: the config loader refuses a value past
one (a typo, a negative size or duration, a zero the code divides by, loops on or indexes with)
and names the setting, instead of the server taking it and finding out at run time. msgspec
checks them when it decodes (the loader), not when code builds a struct itself."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["AtLeastOne", "NonNegative", "NonNegativeFloat", "Positive"]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]  # a rate or duration whose 0 means something
Positive = Annotated[float, msgspec.Meta(gt=0)]  # a wait or an interval: 0 would not wait, or wait for ever
