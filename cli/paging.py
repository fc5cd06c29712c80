"""Every page of a List RPC, in order: the one loop over `next_page_token`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


Page = TypeVar("Page", bound=_Page)


async def pages(fetch: Callable[[str], Awaitable[Page]]) -> AsyncIterator[Page]:
    """`fetch(page_token)` from the first page until one names no next page."""
    token = ""
    while True:
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return
