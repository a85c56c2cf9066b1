"""Typed parameters of the evaluation flows (``evaluate``, ``evaluate-fanout``): the choices their forms offer.

The core names an unknown one (:func:`~brainstacks_core.evaluation.suite.check_request`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from brainstacks_core.evaluation.config import MODES, PROTOCOLS
from brainstacks_core.evaluation.suite import GROUPS, available

EvalMode = Annotated[str, Field(json_schema_extra={"enum": list(MODES)})]
EvalTask = Annotated[str, Field(json_schema_extra={"enum": [*available(), *GROUPS]})]
EvalProtocol = Annotated[str, Field(json_schema_extra={"enum": list(PROTOCOLS)})]
ItemLimit = Annotated[int, Field(ge=1)]
