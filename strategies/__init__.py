"""The Flower side of fl-dp: one strategy class (Message API) that drives any algorithm of :mod:`fl_dp`,
the ServerApp, and the apps of a run built from Python (:func:`build_apps`, :func:`simulate`)."""

from strategies.fl_dp_strategy import FlDpStrategy

__all__ = ["FlDpStrategy", "build_apps", "simulate"]


def __getattr__(name: str):  # noqa: ANN202 - lazy: the apps import the ClientApp, which imports this package
    if name in ("build_apps", "simulate", "FlowerRun"):
        from strategies import apps

        return getattr(apps, name)
    raise AttributeError(name)
