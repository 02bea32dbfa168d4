"""What the query routes hand their services: the process's clients, as `QueryTools`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.db import DatabaseDep
from app.query.service import QueryTools
from app.runtime import RuntimeDep


async def query_tools(runtime: RuntimeDep, db: DatabaseDep) -> QueryTools:
    # Built per request from the runtime's current clients (tests swap the LLM client).
    return QueryTools(
        settings=runtime.settings,
        db=db,
        embedder=runtime.embedder,
        questions=runtime.questions,
        store=runtime.store,
        llm=runtime.llm,
    )


Tools = Annotated[QueryTools, Depends(query_tools)]
