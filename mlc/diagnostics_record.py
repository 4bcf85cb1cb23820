"""The diagnostics record in eval.json: one typed, versioned reader and writer, and the formatters
that every view of it (the report, the model card, the app, ``train evaluate``'s line) shares.

Schema versions: 1, records written before ``schema`` existed (no Grad-CAM localisation, no
faithfulness or sanity checks: read with those as None); 2, the current one. A record from a newer
mlc is refused with a message naming both versions (``mlc.formats``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlc.formats import check_format

DIAGNOSTICS_SCHEMA = 2


@dataclass
class Diagnostics:
    """What ``mlc.diagnostics.diagnose`` measured of one model on one split (the parts' own layouts
    are documented there); ``extra`` keeps keys this version does not know."""

    map: str | None = None  # the kind of the model's own map: CAM | Grad-CAM | attention
    input_size: int | None = None
    map_size: list[int] | None = None
    num_images: int | None = None
    localization: dict | None = None  # pointing game and box energy: method, grad_cam, random, centre
    flip: dict | None = None
    scale: dict | None = None
    faithfulness: dict | None = None  # mlc.faithfulness.Faithfulness, as a dict
    sanity: dict | None = None  # mlc.sanity.Sanity, as a dict
    graph: dict | None = None  # mAP with and without the label graph
    schema: int = DIAGNOSTICS_SCHEMA
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Diagnostics":
        """The one reader: an older record is converted (missing parts are None), a newer one refused."""
        version = check_format({"format_version": data.get("schema", 1)}, "diagnostics", DIAGNOSTICS_SCHEMA)
        names = {f.name for f in dataclasses.fields(cls)} - {"schema", "extra"}
        record = cls(**{k: data[k] for k in names if k in data}, schema=DIAGNOSTICS_SCHEMA,
                     extra={k: v for k, v in data.items() if k not in names | {"schema"}})
        if version < 2 and record.localization is not None:
            record.localization.setdefault("grad_cam", None)  # version 1 scored the own map only
        return record

    def to_dict(self) -> dict[str, Any]:
        """The one writer: JSON-ready (NaN as null), ``extra`` kept."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return json_clean({**self.extra, **out})


def read_diagnostics(eval_result: Mapping[str, Any] | None) -> Diagnostics | None:
    """eval.json's "diagnostics" as a ``Diagnostics`` (None when the run has none)."""
    data = (eval_result or {}).get("diagnostics")
    return Diagnostics.from_dict(data) if isinstance(data, Mapping) else None


# -- the formatters every view uses -------------------------------------------------------------
def json_clean(x: Any) -> Any:
    """NaN as None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Mapping):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


def undefined(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: Any, digits: int = 1, unit: str = "") -> str:
    """A fraction as a percentage for text ("73.6"); "n/a" when undefined."""
    return "n/a" if undefined(x) else f"{100.0 * float(x):.{digits}f}{unit}"


def pct_value(x: Any, digits: int = 1) -> float | None:
    """A fraction as a rounded percentage for tables and the Hub's model-index; None when undefined."""
    return None if undefined(x) else round(100.0 * float(x), digits)


def num(x: Any, fmt: str = ".3f") -> str:
    """A number in ``fmt``; "n/a" when undefined."""
    return "n/a" if undefined(x) else format(float(x), fmt)
