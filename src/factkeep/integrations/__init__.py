"""Bridges from factkeep's methods to other training libraries.

Each integration is its own module and imports its library only there, so that
``import factkeep`` never needs it: :mod:`factkeep.integrations.trl` (``pip install
'factkeep[trl]'``) runs factkeep's loss terms, teachers and freezing inside a ``trl.SFTTrainer``.
"""
