"""Settings dataclasses as magicgui forms: one widget per chosen field, its default from the
dataclass, read back into a validated instance (the dataclass says what is wrong)."""

from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import Container, create_widget


def settings_form(cls: type, fields: dict[str, dict[str, Any]], *, labels: dict[str, str] | None = None) -> Container:
    """A form of ``cls``'s ``fields`` (name -> magicgui options, e.g. ``min``, ``max``,
    ``step``, ``tooltip``); the other fields keep their defaults. ``form.<field>.value``
    reads and sets each one."""
    defaults = cls()
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    widgets = []
    for name, options in fields.items():
        options = dict(options)
        value = options.pop("value", getattr(defaults, name))  # e.g. 0 standing for None
        tooltip = options.pop("tooltip", None)
        annotation = options.pop("annotation", type(value) if value is not None else types[name])
        widget = create_widget(
            value=value, annotation=annotation, name=name,
            label=(labels or {}).get(name, name.replace("_", " ").capitalize()), options=options,
        )
        if tooltip:
            widget.tooltip = tooltip
        widgets.append(widget)
    return Container(widgets=widgets, labels=True)


def read_settings(cls: type, form: Container, **fixed: Any):
    """``cls(**form values, **fixed)`` (``fixed`` wins): raises ``ValueError`` naming a bad value."""
    return cls(**{**{w.name: w.value for w in form}, **fixed})
