"""The error every validator of a document raises (plans, alert settings, Margin Guard rules,
limits): a ValueError that names the field, so the CLI and the APIs answer 4xx naming it."""
from __future__ import annotations


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
