"""What you do with the teachers of the manifest: download them, verify them, keep the record.

The manifest itself (which teachers exist, where their checkpoints are) is read by
:mod:`distill.recipe.manifest`, since a recipe's ``teacher: {name: ...}`` resolves
through it. Here: :mod:`~distill.teachers.fetch` downloads published checkpoints,
:mod:`~distill.teachers.verify` evaluates one against the paper's accuracy, and
:mod:`~distill.teachers.records` keeps verified sha256s and each teacher's status.
"""
