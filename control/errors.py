"""Errors of the control-plane services: each names the field at fault and maps to an HTTP status."""
from __future__ import annotations


class ControlError(ValueError):
    status = 422

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


class InvalidInput(ControlError):
    status = 422


class NotFound(ControlError):
    status = 404


class Conflict(ControlError):
    status = 409
