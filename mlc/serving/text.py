"""Text from checkpoints and visitors made safe for Markdown, and the model status shown above the tabs."""
from __future__ import annotations

import html
import re
from typing import Any

from mlc.serving.model_set import Method, ModelSet


def md(text: Any) -> str:
    """Text from a checkpoint or a visitor, safe inside Markdown: HTML escaped, Markdown syntax
    backslash-escaped, one line (a class named "[x](http://...)" stays text, not a link)."""
    text = html.escape(str(text), quote=False).replace("\n", " ")
    return re.sub(r"([\\`*_{}\[\]()#+\-!|~>])", r"\\\1", text)


_cell = md  # a table cell: the same escaping


def _evaluation_summary(method: Method) -> str:
    ev = method.evaluation
    if ev is None:
        return method.note or "-"
    map_ = ev["metrics"].get("map")
    return (f"mAP {'-' if map_ is None else f'{100 * map_:.1f}'} on {ev.get('dataset', '?')} "
            f"{ev.get('split', '?')} ({ev.get('num_images', '?')} images)")


def status_markdown(model_set: ModelSet) -> str:
    """Which models serve, which failed and why, and whether the backbone is shared."""
    wanted = list(dict.fromkeys([*model_set.methods, *model_set.problems]))
    head = f"**Models** from {md(model_set.display_source)}: {len(model_set.methods)} of {len(wanted)} loaded"
    for backbone in model_set.shared:
        whole = [n for n, m in model_set.methods.items() if m.model.backbone is backbone]
        tops = [n for n, m in model_set.methods.items() if getattr(m.model.backbone, "bottom", None) is backbone]
        if whole:
            head += f"; {', '.join(whole)} share one `{backbone.name}` backbone"
        if tops:
            cut = model_set.methods[tops[0]].model.backbone.cut
            head += (f"; {', '.join(tops)} share `{backbone.name}` blocks 0-{cut - 1} and run their own "
                     f"fine-tuned top blocks")
    rows = ["| method | status | backbone | image size | evaluation |", "|---|---|---|---|---|"]
    for name in wanted:
        if name in model_set.methods:
            m = model_set.methods[name]
            model, summary = m.model, _cell(_evaluation_summary(m))
            rows.append(f"| {name} | loaded | {model.backbone_name} | {model.image_size} | {summary} |")
        else:
            rows.append(f"| {name} | **not loaded**: {_cell(model_set.problems[name])} | | | |")
    return head + ".\n\n" + "\n".join(rows)
