"""forgetting: a continual-learning experiment harness for measuring and holding back forgetting.

In a notebook::

    import forgetting
    rows = forgetting.run(method="kl", kl_lambda=0.5, epochs=2)      # one run's tidy rows, in results/<its budget>
    df = forgetting.load_results(rows.attrs["results_dir"])          # every run there, config columns joined
    figs = forgetting.plot.figures(df)                               # matplotlib figures
"""

__all__ = ["kl_penalty", "train_epoch_kl_reg", "run", "load_results"]
__version__ = "0.2.0"

_LAZY = {"kl_penalty": "penalty", "train_epoch_kl_reg": "penalty", "load_results": "api"}


def __getattr__(name):
    # Imported on first use, so that reading results (forgetting.plot) does not pay for torch.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in ("run", "plot"):  # forgetting.run is also callable: forgetting.run(method="kl", ...)
        from importlib import import_module

        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'forgetting' has no attribute {name!r}")
