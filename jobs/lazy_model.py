"""The base of the API's response models: each builds its validator on first use.

Pydantic normally builds a model's validator and serializer when the class is
defined, and FastAPI builds one more adapter per route field; for Conveyor's
few dozen models that was about a tenth of a Lambda cold start, paid before the
first request even though a request needs only its own route's models. With
``defer_build`` a model is built the first time it validates or serializes
(once per process), and FastAPI's adapters of a deferred model wait too.

Two kinds of model do not use it. Task payload models: the worker imports them
before it forks, and a deferred one would be built again in every work-horse.
Request bodies: FastAPI wraps each in an adapter named after the parameter and
silences pydantic's warning about that name only while it builds at once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LazyModel(BaseModel):
    """A pydantic model whose validator and serializer are built on first use."""

    model_config = ConfigDict(defer_build=True)
