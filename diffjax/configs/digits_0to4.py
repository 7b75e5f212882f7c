"""The default digits job on the digits 0-4 only: one half of the superposition demonstration.

Pair it with ``digits_5to9`` and sample the union with ``diffjax sample --workdir A --workdir B
--superpose or`` (SuperDiff OR), or the set where both models' densities are equal with ``--superpose and``.
"""

from diffjax.configs.digits import get_config as _digits


def get_config():
    c = _digits()
    c.data.classes = "0-4"
    return c
