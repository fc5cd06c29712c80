"""Workflow modules compiled once per worker process.

The workflow sandbox imports a workflow's module afresh for every workflow run, through
the ordinary import system. Where no bytecode cache exists (PYTHONDONTWRITEBYTECODE on a
source checkout, as this project's machines set it in their environment, or a read-only
tree), every
run compiled the module's source again: a quarter of the worker's CPU at 20 journeys
started per second; where one exists, every run read and unmarshalled it. The loader
here keeps each module's code object for the life of the process, so a run still
executes the module in its own sandbox (its globals and the sandbox's checks are
untouched) but never compiles or reads it again. It also means a running worker keeps the
workflow code of its first run of each module even if the files change under it.

Limits: the folders' finder knows Python source files only (the workflow folders hold
nothing else), and the packages above them (`workers`, `workers.journey`) are still loaded
afresh per run by the sandbox: they are a line each.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from types import CodeType
from typing import ClassVar


class CompiledOnceLoader(SourceFileLoader):
    """A source loader whose code objects are compiled (or read) once per process."""

    _code: ClassVar[dict[str, CodeType]] = {}

    def get_code(self, fullname: str) -> CodeType | None:
        code = self._code.get(self.path)
        if code is None:
            compiled = super().get_code(fullname)
            if compiled is None:
                return None
            code = self._code[self.path] = compiled
        return code


def compile_once(*workflows: type) -> None:
    """Make the modules in these workflow classes' folders load through
    CompiledOnceLoader. Idempotent; affects imports made after the call (the sandbox's)."""
    for workflow in workflows:
        module_file = sys.modules[workflow.__module__].__file__
        assert module_file is not None, f"{workflow.__module__} has no source file"
        folder = os.path.dirname(module_file)
        sys.path_importer_cache[folder] = FileFinder(folder, (CompiledOnceLoader, SOURCE_SUFFIXES))
