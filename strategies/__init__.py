"""The Flower side of fl-dp: one strategy class (Message API) that drives any algorithm of :mod:`fl_dp`,
the ServerApp, and the apps of a run built from Python (:func:`build_apps`, :func:`simulate`)."""

__all__ = ["FlDpStrategy", "build_apps", "simulate"]


def __getattr__(name: str):  # noqa: ANN202
    # lazy: the ClientApp imports this package (for the SecAgg+ bridge) and needs neither the
    # server's strategy (pandas) nor the apps (which import the ClientApp)
    if name == "FlDpStrategy":
        from strategies.fl_dp_strategy import FlDpStrategy

        return FlDpStrategy
    if name in ("build_apps", "simulate", "FlowerRun"):
        from strategies import apps

        return getattr(apps, name)
    raise AttributeError(name)
