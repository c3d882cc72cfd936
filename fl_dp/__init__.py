"""fl-dp: private and communication-efficient federated learning.

The math lives here as small torch functions (operators, compressors, mechanisms,
privacy accounting, models, data); :mod:`fl_dp.algorithms` states each strategy as
a client hook and a server hook, and :mod:`fl_dp.federation` runs them.
"""

from fl_dp.config import ConfigError, RunConfig

__all__ = ["ConfigError", "RunConfig"]
__version__ = "0.1.0"
