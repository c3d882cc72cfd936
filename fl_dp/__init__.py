"""fl-dp: private and communication-efficient federated learning.

The math lives here as small torch functions (operators, compressors, mechanisms, privacy
accounting, models, data). :mod:`fl_dp.rules` states each strategy as a client hook and a server
hook, :mod:`fl_dp.registry` names them, :mod:`fl_dp.client` and :mod:`fl_dp.server` run one side
of a round each, and :mod:`fl_dp.inprocess` runs both without Flower.
"""

from fl_dp.config import ConfigError, RunConfig

__all__ = ["ConfigError", "RunConfig"]
__version__ = "0.1.0"
