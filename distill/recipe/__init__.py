"""Recipes: what a run is, from YAML files (and overrides) to a validated, resolved :class:`~distill.recipe.schema.Recipe`.

``schema`` holds the dataclasses; ``compose`` merges ``base:`` files and overrides;
``load`` validates against the schema and every registry; ``manifest`` reads the
teacher manifest through which ``teacher: {name: ...}`` resolves; ``resolve`` turns a
loaded recipe into the files a run uses (teacher checkpoint and its sha256).

This package's ``__init__`` imports nothing, so that the torch-free parts (schema,
composition, YAML) load without the registries behind ``load``.
"""
