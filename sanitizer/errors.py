"""Errors the library raises. Each carries a stable ``code``, a message and a hint on how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class SanitizerError(Exception):
    code = "sanitizer_error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(SanitizerError):
    """The caller's input is wrong; the message says what and the hint how to fix it."""

    code = "invalid_input"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.column:
            where += f" column '{self.column}'"
        return f"{where}: {self.message}"


class DataValidationError(InputError):
    code = "invalid_dataset"

    def __init__(self, problems: list[Problem], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"dataset is invalid: {shown}{more}", hint=hint)


class UnsafeFileError(InputError):
    code = "unsafe_file"


class UnknownModelError(InputError):
    code = "unknown_model"


class AdapterMismatchError(InputError):
    code = "adapter_mismatch"


class ConfigError(InputError):
    code = "invalid_config"


class Cancelled(SanitizerError):
    code = "cancelled"
