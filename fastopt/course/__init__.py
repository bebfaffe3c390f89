"""The course toolkit: the L-layer network of the course notes (:mod:`.network`), course-style
naive NumPy optimizers used as the baseline by the demo and by the benchmarks (:mod:`.naive`),
the course's 2-D surfaces and every optimizer's path on them (:mod:`.surfaces`), and the demo's
pictures (:mod:`.plots`).

Not imported by ``import fastopt``.  Importing it costs NumPy only: scikit-learn is imported
by :func:`load_data`, matplotlib by the plotting functions.
"""
from .naive import AdamNaive, GDNaive, MomentumNaive, RMSpropNaive
from .network import (backward, compute_cost, forward, initialize_parameters, layer_dims_for,
                      load_data, predict)
from .plots import (COLORS, plot_boundaries, plot_cost, plot_ewa, plot_lr, plot_paths,
                    temperature_year)
from .surfaces import SURFACES, Surface, format_paths, run_path, run_paths

__all__ = [
    "initialize_parameters", "forward", "compute_cost", "backward", "predict", "load_data",
    "layer_dims_for",
    "GDNaive", "MomentumNaive", "RMSpropNaive", "AdamNaive",
    "COLORS", "plot_cost", "plot_lr", "plot_boundaries", "temperature_year", "plot_ewa",
    "plot_paths", "Surface", "SURFACES", "run_path", "run_paths", "format_paths",
]
