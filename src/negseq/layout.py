"""The two candidate layouts (DESIGN §4), in a module light enough for the service client."""

from typing import Literal

Layout = Literal["interleaved", "suffix"]
LAYOUTS: tuple[Layout, ...] = ("interleaved", "suffix")
