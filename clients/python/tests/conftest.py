from __future__ import annotations

from typing import Iterator

import pytest
from vramguard_server import TOKEN, Server


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.cleanup()


@pytest.fixture
def server_with_token() -> Iterator[Server]:
    s = Server(token=TOKEN)
    yield s
    s.cleanup()
