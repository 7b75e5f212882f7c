"""The default digits job on the digits 5-9 only: the other half of the superposition demonstration.

Pair it with ``digits_0to4`` and sample the union with ``diffjax sample --workdir A --workdir B
--superpose or`` (SuperDiff OR), or the set where both models' densities are equal with ``--superpose and``.
"""

from diffjax.configs.digits import get_config as _digits


def get_config():
    c = _digits()
    c.data.classes = "5-9"
    return c
