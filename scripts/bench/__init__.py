"""The sections of ``scripts/benchmark.py`` (its docstring: usage and what each measures), one
module per section, named for its JSON key:

* :mod:`bench.model_step` (``model``, (a)), :mod:`bench.steelseg_loop` (``steelseg``, (b)),
  :mod:`bench.reference_loop` (``reference``, (c)): the three training loops;
* :mod:`bench.inference` (``inference``, (d)), :mod:`bench.rle` (``rle``, (e)),
  :mod:`bench.data_path` (``data``), :mod:`bench.memory` (``memory``);
* :mod:`bench.runtimes` (``runtimes``, (r)), with its models in :mod:`bench.runtime_models` and
  its engine variants in :mod:`bench.runtime_engines`;
* :mod:`bench.serve` (``serve``, (s)): ``steelseg-serve`` under load, only when asked for.

Shared by all: :mod:`bench.measure` (the timing helper: clocks, rates, cores, memory peaks),
:mod:`bench.context` (the run, its synthetic data and network). Around them:
:mod:`bench.options` (sections, profiles, validation), :mod:`bench.runner` (runs the sections),
:mod:`bench.summary` (ratios, the projected reference recipe) and :mod:`bench.table` (the
printed table). ``benchmark.py`` puts scripts/ on ``sys.path``, so ``bench`` and
``bench_rle`` import as top-level modules.
"""
